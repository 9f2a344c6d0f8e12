"""DDTracking as a direction getter: the tracker's loop, the network's choice of direction.

Each streamline keeps its GRU hidden state in the tracker's per-streamline state and
advances it one point per step (never re-running the prefix); all active streamlines are
batched together. Per step, at the current points:

1. the 3x3x3 SH neighbourhoods feed the spatial encoder (``z_t``, ``v_t``);
2. the GRU consumes ``[z_t, d_{t-1}]`` (``d_{t-1}`` the step that reached the point);
3. the direction is the regression head's, or a sample of the reverse diffusion with
   ``steps`` sampler steps from ``y_1 = 0`` (deterministic) or ``y_1 ~ N(0, I)``
   (``stochastic``; draws from the tracker's per-chunk generator, so ``--seed`` fixes
   them);
4. with ``symmetries``, steps 1-3 run once per member ``R`` of a group of the grid's symmetries, on the
   turned input with a GRU state of their own, and the direction is the mean of the ``R^T d_R``
   (:mod:`.symmetrise`); with a ``guide``, it is then moved part of the way to the CSD fODF peak
   it points at (:mod:`.guide`);
5. it is invalid (the half ends) off the grid or more than ``max_angle`` from ``d_{t-1}``:
   the model's output is a direction with a sign, so turning back is a turn of > 90 degrees.

The network runs as :class:`.inference.TrackingNetwork`, a dense copy of its weights made when
the getter is made (the same function up to rounding; README, "Learned tracking", for the
speed), on the channels-last neighbourhoods of :func:`.features.samples`.

Seeds start along the principal diffusion direction of the signal at the seed: the minimum,
on a 362-direction hemisphere, of the order <= 2 part of its SH (the tensor-like quadratic
form; on the fibercup phantom at SNR 18 its median error is 4.6 degrees against 12 for the
full lmax 6 series, whose higher orders mostly add noise here); for a network that reads the
CSD fODF, the maximum of that part (an fODF peaks along the fibre, where the signal dips);
``+v`` forward, ``-v`` backward. The
backward half starts from the GRU state rebuilt over the forward half reversed, as if the
streamline had been tracked from its forward end back to the seed (:meth:`init_backward`),
from the spatial encodings the forward half logged at those points.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ...errors import ConfigError
from ...reconst.peaks import default_sphere
from ...reconst.sh import sh_basis
from ...tracking.getters import _cos
from ...tracking.interpolate import grid_volume, inside_grid, trilinear
from .defaults import DEFAULT_MODEL, SHIPPED_MODELS, check_model_choice
from .diffusion import sampler_noise
from .features import samples
from .guide import FodfGuide
from .inference import TrackingNetwork
from .model import DDTracking, build_model
from .symmetrise import Symmetries

# Rows of a tracking step the network takes at once on a CPU. Its activations for a block stay
# in the caches: on the brain phantom's SH, one thread, 13,600 rows ran 1.3-1.4x (``full``) and
# 1.4-1.6x (``fast``) faster per step in blocks of 1,024 than at once, with the same results
# (benchmarks/measure_step_blocks.py), and the chunk's activations need no longer fit in memory
# together. A GPU takes the step whole.
CPU_BLOCK_ROWS = 1024

# The fewest rows of a padded block (bfloat16 products on a CPU, :meth:`DDTrackingGetter._in_blocks`). Padding a
# block to the next power of two (at least 128 rows: a block of 5 runs as 128) leaves 4 row counts: each of
# oneDNN's bfloat16 kernels, about 20 ms to make, is made for ~30 matrices and each count once per run. On 10,000
# fibercup seeds, 128 tracked about 8% faster than 32 (more counts to make, less padding; fast and full models)
# and 14% faster than 1,024 (one count, the most padding; fast). With symmetries (:mod:`.symmetrise`) a block holds
# streamlines, each ``copies`` network rows: it is padded to at least ``MIN_PADDED_ROWS // copies`` streamlines.
MIN_PADDED_ROWS = 128


def load_ddtracking(weights: str | Path | None = None, model: str | None = None) -> tuple[DDTracking, dict]:
    """The network (eval mode, CPU) and its weights-file metadata.

    ``weights`` None loads the shipped ``model``: ``full`` (the paper's sizes) or ``fast`` (the
    small CPU model, ``ddtracking_fast.pt``), by default :data:`.defaults.DEFAULT_MODEL`; see
    the weights README for how each was trained.
    """
    from ...training.files import load_model
    from ...weights import shipped_weights

    check_model_choice(weights, model)
    path = shipped_weights(SHIPPED_MODELS[model or DEFAULT_MODEL]) if weights is None else Path(weights)
    model, meta = load_model(path, "ddtracking", "DDTracking", build_model)
    return model.eval(), meta


def load_named(spec: str | Path) -> tuple[DDTracking, dict]:
    """:func:`load_ddtracking` of a shipped model's name (``full``, ``fast``) or of a weights file: what
    ``train ddtracking --init`` and the benchmark scripts' ``--model`` take."""
    return load_ddtracking(model=str(spec)) if str(spec) in SHIPPED_MODELS else load_ddtracking(Path(spec))


class DDTrackingGetter:
    """A :class:`~difftract.tracking.getter_protocol.Getter` with per-streamline state (the GRU's).

    Parameters
    ----------
    model : DDTracking
        Its weights are read once, here (:class:`.inference.TrackingNetwork`).
    sh : array (X, Y, Z, m)
        What the network reads (:func:`.data.input_sh` of the scan for its ``config.input``).
    max_angle : float
        Largest turn per step, degrees.
    steps : int
        Sampler steps ``S`` (generative variants).
    stochastic : bool
        Sample from ``y_1 ~ N(0, I)`` with the posterior noise (probabilistic tracking).
    voxel_sizes : sequence of 3 float
        The scan's voxel sizes: the network works in voxel space, the tracker in mm.
    guide : FodfGuide, optional
        Moves each direction part of the way to the CSD fODF peak it points at (:mod:`.guide`).
    matmul_dtype : torch.dtype, optional
        ``torch.bfloat16``: the network's large products in bfloat16 (:mod:`.inference`); on a
        CPU each block of rows is then padded to a power of two of at least :data:`MIN_PADDED_ROWS`
        rows, so that oneDNN makes its kernels for a few row counts only.
    symmetries : str
        A group of the voxel grid's symmetries (:data:`.symmetrise.SUBGROUPS`) to average
        each direction over, one network copy per element (:mod:`.symmetrise`); ``"none"``: the
        network once.

    Use the Euler integrator: RK2/RK4's intermediate evaluations would advance the GRU at
    points the streamline never reaches.
    """

    name = "ddtracking"
    cos_max_angle: float

    def __init__(self, model: DDTracking, sh, max_angle: float = 45.0, steps: int = 1, stochastic: bool = False,
                 voxel_sizes=(1.0, 1.0, 1.0), guide: FodfGuide | None = None, matmul_dtype: torch.dtype | None = None,
                 symmetries: str = "none"):
        if steps < 1:
            raise ConfigError(f"--sampler-steps must be at least 1, got {steps}")
        sh = grid_volume(np.asarray(sh, dtype=np.float32) if not isinstance(sh, torch.Tensor) else sh)
        if sh.dim() != 4 or sh.shape[-1] != model.config.n_coeffs:
            raise ConfigError(f"the model reads {model.config.n_coeffs} SH coefficients per voxel, "
                              f"got a volume of shape {tuple(sh.shape)}")
        sizes = np.asarray(voxel_sizes, dtype=np.float64)
        if sizes.shape != (3,) or not np.all(sizes > 0):
            raise ConfigError(f"voxel sizes must be three positive numbers, got {voxel_sizes}")
        if guide is not None and guide.field.shape != tuple(sh.shape[:3]):
            raise ConfigError(f"the guide's fODF grid {guide.field.shape} differs from the scan's {tuple(sh.shape[:3])}")
        self.sh, self.guide = sh, (None if guide is None else guide.to(sh.device, sh.dtype))
        self.network = TrackingNetwork(model, matmul_dtype=matmul_dtype)
        self.max_angle, self.cos_max_angle = float(max_angle), _cos(max_angle)
        self.steps, self.stochastic = int(steps), bool(stochastic)
        self.voxel_sizes = torch.as_tensor(sizes / sizes.min(), dtype=sh.dtype)
        self.sphere = torch.as_tensor(np.asarray(default_sphere().vertices), dtype=sh.dtype)   # (V, 3) hemisphere
        self.basis = torch.as_tensor(sh_basis(self.sphere.numpy(), 2, False)[0], dtype=sh.dtype)   # (V, 6)
        self.peak_sign = -1.0 if self.network.config.input == "fodf" else 1.0   # seeds: argmin of sign * amplitude
        self.symmetries = (None if symmetries == "none" else                   # (the name is checked either way)
                           Symmetries(symmetries, model.config.n_coeffs, sh.device, sh.dtype))
        self.copies = 1 if self.symmetries is None else len(self.symmetries)
        # streamlines per network call on a CPU (:meth:`_in_blocks`): CPU_BLOCK_ROWS network rows
        self.block_rows = max(1, CPU_BLOCK_ROWS // self.copies)

    def to(self, device, dtype):
        """A copy on ``device`` in ``dtype``, rebuilt from the weights read when this getter was made."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.network = self.network.to(device, dtype)
        out.guide = None if self.guide is None else self.guide.to(device, dtype)
        out.symmetries = None if self.symmetries is None else self.symmetries.to(device, dtype)
        out.sh, out.sphere, out.basis, out.voxel_sizes = (
            t.to(device=device, dtype=dtype) for t in (self.sh, self.sphere, self.basis, self.voxel_sizes))
        return out

    # ------------------------------------------------------------------ frames
    # The tracker's directions are physical (mm) unit vectors along the array axes; the
    # network was trained on voxel-space ones. They differ only for anisotropic voxels.
    def _to_voxel(self, dirs: torch.Tensor) -> torch.Tensor:
        return F.normalize(dirs / self.voxel_sizes, dim=-1)

    def _to_mm(self, dirs: torch.Tensor) -> torch.Tensor:
        return F.normalize(dirs * self.voxel_sizes, dim=-1)

    # ------------------------------------------------------------------ the protocol
    @torch.no_grad()
    def seed_directions(self, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The minimum of the signal's order <= 2 part on the hemisphere (the fODF's: its maximum); off-grid
        and empty seeds dropped."""
        values, _ = trilinear(self.sh, seeds)
        amplitude = self.peak_sign * (values[:, : self.basis.shape[1]] @ self.basis.T)
        index = torch.nonzero(inside_grid(self.sh, seeds) & (values.abs().sum(dim=1) > 0))[:, 0]
        return self.sphere[amplitude[index].argmin(dim=1)], index

    def bytes_per_seed(self, dtype_bytes: int) -> int:
        """One network step per streamline: the 3x3x3 SH neighbourhood, the spatial branches' activations,
        the GRU's gates and states (three gates per layer) and the denoiser, about 20x a classical pmf
        query at the paper's sizes.

        On a CPU the network runs in blocks of :attr:`block_rows` streamlines (:meth:`_in_blocks`), whose
        activations are a fixed cost (about 90 MB per worker for ``full``); a streamline then costs what
        it keeps through a step, per copy (:mod:`.symmetrise`): its GRU states in and out, ``z_t``,
        directions and noise, twice while the blocks are joined.
        """
        c = self.network.config
        guide = 0 if self.guide is None else self.guide.bytes_per_seed(dtype_bytes)
        if self.sh.device.type == "cpu":
            kept = self.copies * (2 * c.gru_layers * c.gru_hidden + c.z_dim + 3 * (self.steps + 2))
            return 2 * kept * dtype_bytes + guide
        neighbourhood = 27 * c.n_coeffs * (1 + c.conv_channels // 8)
        branches = 27 * c.conv_channels + 2 * c.mlp_hidden + c.z_dim + c.v_dim
        gru = c.gru_layers * 5 * c.gru_hidden
        denoiser = 8 * c.denoiser_width + c.time_dim
        per_copy = (neighbourhood + branches + gru + denoiser) * dtype_bytes * 2   # x2: a layer's input and output
        return self.copies * per_copy + guide

    def bytes_per_point(self, dtype_bytes: int) -> int:
        """The forward half's spatial encoding ``z_t`` of each point, kept for :meth:`init_backward`."""
        return self.copies * self.network.config.z_dim * dtype_bytes

    def _initial(self, n: int) -> torch.Tensor:
        """Fresh GRU states: ``(n, layers, hidden)``, or ``(n, copies, layers, hidden)`` with symmetries."""
        h = self.network.initial(n * self.copies)
        return h if self.symmetries is None else h.reshape(n, self.copies, *h.shape[1:])

    def init(self, seeds, first_dirs, generator=None):
        # each forward step's z_t, for init_backward (shared by every row selection of the state: _take passes it on)
        state = {"h": self._initial(len(seeds)), "z_log": _Log()}
        return self._with_generator(state, generator)

    def init_backward(self, seeds, first_dirs, forward_points, forward_count, generator=None, forward_state=None):
        """The state after the forward half reversed: ``forward_points (S, T, 3)`` (step 1 first), ``forward_count (S,)``.

        Streamline ``s`` is fed ``q_0, ..., q_{n-1} = f_n, ..., f_1`` (``n = forward_count[s]``),
        each with the move that reached it in that order, ``q_i - q_{i-1}`` (for ``q_0``, its
        own first move ``q_1 - q_0``, as in training); the seed itself is consumed by the
        next :meth:`directions` call, whose previous direction is ``x_0 - f_1``. The rows
        advance together one point per step, right-aligned so that every row ends on its
        ``f_1`` at the last step.

        Right-aligned, step ``j`` feeds every row its point ``f_{T-j}``, and the rows that have
        one are those the forward half's call ``T - j`` evaluated, in the same order: so that
        call's ``z_t``, logged in ``forward_state``, is this step's, and only the GRU runs. The
        log is used when it has one entry per step of the forward half (Euler: one call per
        step) and each entry the rows expected; otherwise ``z_t`` is computed again.
        """
        S, T = forward_points.shape[:2]
        kept = forward_state.get("z_log") if isinstance(forward_state, dict) else None
        log = kept.entries if kept is not None and len(kept.entries) == T + 1 else None
        h = self._initial(S)
        full = torch.cat([seeds[:, None], forward_points], dim=1)                  # f_0 = seed, f_1 .. f_T
        n = forward_count
        for j in range(T):
            i = j - (T - n)                                                        # position in each reversed row
            rows = torch.nonzero(i >= 0)[:, 0]
            if len(rows) == 0:
                continue
            i, m = i[rows], n[rows]
            point = full[rows, m - i]                                              # q_i = f_{n-i}
            back = (m - i.clamp(min=1))                                            # q_i - q_{i-1}, or q_1 - q_0
            prev = F.normalize(full[rows, back] - full[rows, back + 1], dim=-1)
            z = log[T - j] if log is not None and len(log[T - j]) == len(rows) else None
            h[rows] = self._in_blocks(self._replay, point, prev, h[rows], z)[0]
        if kept is not None:
            kept.clear()
        return self._with_generator({"h": h}, generator)

    def directions(self, points, prev_dirs, state):
        prev = F.normalize(prev_dirs, dim=-1)
        noise = (sampler_noise(len(points), 3, self.steps, state.get("generator"), points.device, points.dtype)
                 if self.stochastic and self.network.denoiser is not None else None)   # the draws of one call
        z, h, dirs = self._in_blocks(self._step, points, prev, state["h"], noise)
        if "z_log" in state:                                                       # the forward half
            state["z_log"].add(z, state["h"])
        if self.guide is not None:
            dirs = self.guide(points, dirs)
        valid = inside_grid(self.sh, points) & ((dirs * prev).sum(dim=-1) >= self.cos_max_angle)
        return dirs, valid, {**state, "h": h}

    def _step(self, points, prev, h, noise):
        """The network on some rows: their ``z_t``, new GRU state and direction (mm); with symmetries, each
        row's copies (:mod:`.symmetrise`: ``z_t`` and states per copy, the direction their mean)."""
        x, prev, s = samples(self.sh, points), self._to_voxel(prev), self.symmetries
        if s is not None:
            x, prev, h = s.samples(x), s.vectors(prev), h.flatten(0, 1)
            noise = None if noise is None else s.vectors(noise)
        z, v = self.network.spatial(x)
        c, h = self.network.recur(z, prev, h)
        dirs = self.network.direction(c, v, self.steps, self.stochastic, noise=noise)
        if s is not None:
            z, h, dirs = z.unflatten(0, (-1, self.copies)), h.unflatten(0, (-1, self.copies)), s.mean(dirs)
        return z, h, self._to_mm(dirs)

    def _replay(self, points, prev, h, z):
        """:meth:`init_backward`'s GRU step on some rows (``z`` None: encoded again)."""
        s = self.symmetries
        if s is not None:
            prev, h, z = s.vectors(prev), h.flatten(0, 1), None if z is None else z.flatten(0, 1)
        if z is None:
            x = samples(self.sh, points)
            z, _ = self.network.spatial(x if s is None else s.samples(x), local=False)
        h = self.network.recur(z, prev, h)[1]
        return (h if s is None else h.unflatten(0, (-1, self.copies)),)

    def _in_blocks(self, fn, *rows_first):
        """``fn`` over the streamlines of ``rows_first`` (tensors with a streamline per row on axis 0, or None)
        in blocks of :attr:`block_rows` on a CPU, its outputs joined; a GPU takes all at once. Where the
        network asks for it (:attr:`.inference.TrackingNetwork.pads_rows`), each block is padded
        with copies of its last row to a power of two and its outputs cut back."""
        n = len(rows_first[0])
        if n == 0 or self.sh.device.type != "cpu" or (n <= self.block_rows and not self.network.pads_rows):
            return fn(*rows_first)
        parts = [self._padded(fn, [None if t is None else t[s:s + self.block_rows] for t in rows_first])
                 for s in range(0, n, self.block_rows)]
        return parts[0] if len(parts) == 1 else tuple(torch.cat(p) for p in zip(*parts))

    def _padded(self, fn: Callable[..., tuple[torch.Tensor, ...]],
                block: list[torch.Tensor | None]) -> tuple[torch.Tensor, ...]:
        """``fn`` on one block's rows, padded to a power of two first where the network asks for it."""
        m = len(block[0])
        fewest = max(1, MIN_PADDED_ROWS // self.copies)      # network rows, not streamlines, make the kernels
        rows = min(self.block_rows, max(fewest, 1 << (m - 1).bit_length())) if self.network.pads_rows else m
        if rows <= m:
            return fn(*block)
        out = fn(*(None if t is None else torch.cat([t, t[-1:].expand(rows - m, *t.shape[1:])]) for t in block))
        return tuple(o[:m].clone() for o in out)      # not views: the forward log keeps z_t for the whole half

    def _with_generator(self, state, generator):
        if self.stochastic:
            if generator is None:
                raise ConfigError("stochastic DDTracking needs a torch.Generator")
            state["generator"] = generator
        return state


class _Log:
    """The forward half's ``z_t``, one entry per tracking step.

    An RK integrator calls :meth:`DDTrackingGetter.directions` several times per step, each
    with the same state; only the first call of a step (a state ``h`` not seen last time)
    is logged, the one whose new state the tracker keeps.
    """

    def __init__(self):
        self.entries: list[torch.Tensor] = []
        self._last: torch.Tensor | None = None

    def add(self, z: torch.Tensor, h: torch.Tensor) -> None:
        if h is not self._last:
            self.entries.append(z)
            self._last = h

    def clear(self) -> None:
        self.entries.clear()
        self._last = None
