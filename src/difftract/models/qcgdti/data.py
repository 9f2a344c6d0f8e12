"""Training data for QCG-DTI: subjects, six-DWI inputs, patches, the loss.

A training subject is a scan with many directions. Its reference tensor is the WLS fit on
all of them; an input is one b0 and six DWIs of it (a flexible or fixed set, see
:mod:`.schemes`). Patches are drawn around random brain voxels.

A simulated subject (a streamed one) has an exact reference instead: the WLS fit of its
noise-free signal on :func:`truth_scheme` (b = 1000, 2000, 3000, 60 directions each),
simulated from the same fibres, tissue and dispersion as its noisy scan (PhantomConfig's
``noise_free_scheme``). That is the benchmark's ground truth (WLS on every volume of the
noise-free twin, with ``--truth all-shells``; the benchmark's scheme has 90, 60 and 60
directions, so the two definitions agree closely, not bit for bit), the same whatever the subject's own drawn
scheme and SNR: a noisy
many-direction fit is a biased target at low SNR and high b (the Rician floor), and a
network trained on it learns the bias.

The per-shell target (``PatchDataset(target="shell")``) is the tensor one shell can measure:
the WLS fit of the b0s and that shell's volumes alone. Diffusion in tissue is not Gaussian,
so the apparent tensor changes with b (in our simulator white-matter FA rises from about
0.65 at b = 500 to 0.79 at b = 3000), and a six-DWI set on one shell carries only that
shell's tensor: the three-shell reference asks it to guess the other shells as well. A folder
subject's per-shell references are fits of its own shells; a simulated subject's are those of
its noise-free twin on the truth scheme's shells, interpolated to the subject's b-values
(:func:`interpolate_shells`). That is the benchmark's default truth (``--truth shell``), whose
shells are the truth scheme's. They are computed only for this target (``per_shell``).

Normalisation: every input volume is divided by the mean of the b0 over the brain mask,
so intensities are about 1 in tissue. The issue asks for mean/std standardisation; a
shift would change the ratios ``S_i / S0`` that carry the tensor by a subject- and
b-value-dependent amount, so only the scale is removed. Targets are the tensor elements in
um^2/ms (mm^2/s times 1000), the same scale for every subject.

Augmentation (training only): the six pairs in random order, each direction's sign
flipped at random (``g`` and ``-g`` are the same measurement), and random flips of the
patch axes with the matching change of the directions and of the tensor's off-diagonals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from dipy.core.gradients import gradient_table
from torch.utils.data import default_collate

from ...errors import ConfigError
from ...io.dwi import load_subject
from ...io.gradients import B0_THRESHOLD
from ...eval.tensor_errors import FA_BINS
from ...reconst import tensor as T
from ...reconst.dti import TensorFit, TensorModel
from ...reconst.sh import SHELL_TOLERANCE, shell_groups, shells
from ...training.dataset import EpochDataset
from .model import LOSSES, N_DWI, TARGETS, TENSOR_SCALE, frobenius2, tensor_parts
from .schemes import SixSet, fixed_six, flexible_pool

# Off-diagonal elements (DIPY order Dxx, Dxy, Dyy, Dxz, Dyz, Dzz) that change sign when an axis flips.
_FLIP_SIGNS = {0: (1, 3), 1: (1, 4), 2: (3, 4)}


@dataclass
class QCGSubject:
    """A scan prepared for QCG-DTI (arrays padded to at least the patch size)."""

    name: str
    data: np.ndarray          # (X, Y, Z, N) float32
    bvals: np.ndarray
    bvecs: np.ndarray         # (N, 3), data-array frame
    mask: np.ndarray          # (X, Y, Z) bool
    reference: np.ndarray     # (X, Y, Z, 6) float32, mm^2/s, WLS on all volumes
    pool: list[SixSet]        # flexible six-DWI sets
    fixed: SixSet
    shell_bvals: np.ndarray | None = None       # (K,) the scan's shells
    shell_reference: np.ndarray | None = None   # (X, Y, Z, K, 6) float32, mm^2/s, the tensor each shell measures

    @property
    def b0_indices(self) -> np.ndarray:
        return np.flatnonzero(self.bvals <= B0_THRESHOLD)


def reference_fit(data, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray, device: str = "cpu",
                  method: str = "WLS") -> TensorFit:
    """The fit of the given volumes by ``method`` (default WLS), in float64."""
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=B0_THRESHOLD)
    return TensorModel(gtab, method).fit(data, mask, device=device, dtype="float64", progress=False)


def reference_tensor(data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray,
                     device: str = "cpu", method: str = "WLS") -> np.ndarray:
    """The tensor of the given volumes by ``method`` (default WLS), (X, Y, Z, 6) in mm^2/s (zero outside the mask)."""
    return reference_fit(data, bvals, bvecs, mask, device, method).lower_triangular().astype(np.float32)


def shell_references(data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray,
                     device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The shells ``(K,)`` of a scan and, per shell, the WLS fit of its b0s and that shell alone ``(X, Y, Z, K, 6)``."""
    groups = shell_groups(bvals)
    b0 = np.flatnonzero(np.asarray(bvals) <= B0_THRESHOLD)
    fits = [reference_tensor(data[..., idx], bvals[idx], bvecs[idx], mask, device)
            for idx in (np.concatenate([b0, g.indices]) for g in groups)]
    return np.array([g.bval for g in groups]), np.stack(fits, axis=3)


def shell_index(shell_bvals: np.ndarray, bval: float) -> int:
    """The index of the shell of ``shell_bvals`` that ``bval`` belongs to (within ``SHELL_TOLERANCE``)."""
    gaps = np.abs(np.asarray(shell_bvals, dtype=np.float64) - bval)
    k = int(np.argmin(gaps)) if gaps.size else -1
    if k < 0 or gaps[k] > SHELL_TOLERANCE:
        raise ConfigError(f"no per-shell reference for b={bval:g} (shells "
                          f"{', '.join(f'{b:g}' for b in shell_bvals)})")
    return k


def interpolate_shells(nodes: np.ndarray, tensors: np.ndarray, bval: float) -> np.ndarray:
    """The per-shell tensor at ``bval`` from those at the shells ``nodes`` (``tensors`` (..., K, 6)).

    Lagrange interpolation in b through every node: quadratic through the truth scheme's
    b = 1000, 2000, 3000. The apparent tensor is smooth in b (its first correction is the
    kurtosis term, linear in b), and on a randomised phantom this reproduces a direct fit's
    white-matter FA to 0.002 (mean absolute difference) at b = 1500 and to 0.010 at b = 500,
    extrapolated. Further than half a node gap (plus the shell tolerance) outside the nodes is
    refused.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    reach = 0.5 * (np.diff(nodes).min() if len(nodes) > 1 else 0.0) + SHELL_TOLERANCE
    if not nodes[0] - reach <= bval <= nodes[-1] + reach:
        raise ConfigError(f"cannot interpolate the per-shell reference to b={bval:g}: the noise-free shells are "
                          f"{', '.join(f'{b:g}' for b in nodes)}")
    weights = [np.prod([(bval - bj) / (bi - bj) for j, bj in enumerate(nodes) if j != i]) for i, bi in enumerate(nodes)]
    return np.einsum("k,...kc->...c", np.array(weights), np.asarray(tensors, dtype=np.float64)).astype(np.float32)


def pad_to(array: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """Zero-pad the first three axes (at the end) to at least ``size`` and a multiple of ``multiple``."""
    target = [max(size, -(-s // multiple) * multiple) for s in array.shape[:3]]
    pad = [(0, t - s) for t, s in zip(target, array.shape[:3])] + [(0, 0)] * (array.ndim - 3)
    return np.pad(array, pad) if any(p[1] for p in pad) else array


def prepare_subject(directory: str | Path, *, patch: int = 32, multiple: int = 4, pool_size: int = 200,
                    seed: int = 0, device: str = "cpu", dwi=None, per_shell: bool = False) -> QCGSubject:
    """Load a subject directory (or use its already loaded ``dwi``), fit its reference tensor (and,
    with ``per_shell``, each shell's) and draw its flexible sets."""
    dwi = load_subject(directory) if dwi is None else dwi
    if dwi.mask is None:
        raise ConfigError(f"{directory}: QCG-DTI training needs mask.nii.gz")
    return subject_from_arrays(Path(directory).name, subject_arrays(dwi, device, per_shell=per_shell), patch=patch,
                               multiple=multiple, pool_size=pool_size, seed=seed)


def subject_arrays(dwi, device: str = "cpu", reference: np.ndarray | None = None, per_shell: bool = False,
                   shells: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """What training reads of a scan with a mask: data, bvals, bvecs, mask, the reference tensor
    (``reference``, else the WLS fit on all the scan's volumes) and, with ``per_shell``, the
    per-shell ones (``shells``: the shells and their tensors, else the fits of each shell of the scan)."""
    bvals, bvecs = np.asarray(dwi.bvals, float), np.asarray(dwi.bvecs, float)
    if reference is None:
        reference = reference_tensor(dwi.data, bvals, bvecs, dwi.mask, device)
    arrays = {"data": dwi.data.astype(np.float32, copy=False), "bvals": bvals, "bvecs": bvecs, "mask": dwi.mask,
              "reference": reference}
    if not per_shell:
        return arrays
    shell_bvals, shell_reference = shell_references(dwi.data, bvals, bvecs, dwi.mask, device) if shells is None \
        else shells
    return {**arrays, "shell_bvals": shell_bvals, "shell_reference": shell_reference}


def truth_scheme() -> tuple[np.ndarray, np.ndarray]:
    """The scheme of a simulated subject's noise-free reference: 1 b0, 60 directions at b = 1000, 2000, 3000."""
    from ...phantom.signal import make_scheme

    return make_scheme((1000.0, 2000.0, 3000.0), (60, 60, 60), 1, np.random.default_rng(0), start="lattice")


def phantom_arrays(phantom, pool_size: int = 200, per_shell: bool = False) -> dict[str, np.ndarray]:
    """:func:`subject_arrays` of a simulated phantom and its flexible sets (a subject stream's preparation).

    With the phantom's noise-free signal (``config.noise_free_scheme``), the reference is its
    WLS fit, not the noisy scan's, and (``per_shell``) the per-shell references are its fits
    on each noise-free shell, interpolated to the scan's shells. The sets (seeded by the phantom's seed) are drawn here,
    in the stream's worker: drawing them takes seconds that would otherwise stall training
    when the subject is loaded.
    """
    from ...training.recipe import phantom_dwi

    dwi = phantom_dwi(phantom)
    exact, exact_shells = None, None
    if phantom.noise_free is not None:
        clean_bvals, clean_bvecs = (np.asarray(a, float) for a in phantom.config.noise_free_scheme)
        exact = reference_tensor(phantom.noise_free, clean_bvals, clean_bvecs, dwi.mask)
        if per_shell:
            nodes, tensors = shell_references(phantom.noise_free, clean_bvals, clean_bvecs, dwi.mask)
            tensors = tensors.astype(np.float64)   # once, not in each interpolation below
            own = shells(np.asarray(dwi.bvals, float))
            exact_shells = own, np.stack([interpolate_shells(nodes, tensors, b) for b in own], axis=3)
    arrays = subject_arrays(dwi, reference=exact, per_shell=per_shell, shells=exact_shells)
    sets = flexible_pool(arrays["bvals"], arrays["bvecs"], pool_size, phantom.config.seed)
    return {**arrays, "six_indices": np.array([s.indices for s in sets]),
            "six_shell": np.array([s.shell for s in sets]), "six_angle": np.array([s.mean_angle for s in sets]),
            "six_condition": np.array([s.condition for s in sets])}


def subject_from_arrays(name: str, arrays: dict[str, np.ndarray], *, patch: int = 32, multiple: int = 4,
                        pool_size: int = 200, seed: int = 0) -> QCGSubject:
    """A :class:`QCGSubject` of :func:`subject_arrays`: padded to the patch, with its six-DWI sets
    (those stored by :func:`phantom_arrays`, else ``pool_size`` drawn with ``seed``)."""
    bvals, bvecs = arrays["bvals"], arrays["bvecs"]
    if "six_indices" in arrays:
        pool = [SixSet(tuple(int(i) for i in idx), float(b), float(a), float(c)) for idx, b, a, c in
                zip(arrays["six_indices"], arrays["six_shell"], arrays["six_angle"], arrays["six_condition"])]
    else:
        pool = flexible_pool(bvals, bvecs, pool_size, seed)
    mask = arrays["mask"].astype(bool)
    per_shell = {}
    if "shell_reference" in arrays:
        per_shell = {"shell_bvals": np.asarray(arrays["shell_bvals"], float),
                     "shell_reference": pad_to(arrays["shell_reference"], patch, multiple)}
    return QCGSubject(name, pad_to(arrays["data"], patch, multiple), bvals, bvecs, pad_to(mask, patch, multiple),
                      pad_to(arrays["reference"], patch, multiple), pool, fixed_six(bvals, bvecs), **per_shell)


def brain_scale(b0: np.ndarray, mask: np.ndarray) -> float:
    """Mean b0 over the mask, the intensity unit of every input."""
    scale = float(b0[mask].mean()) if mask.any() else 0.0
    if not scale > 0:
        raise ConfigError("the b0 volume is zero over the brain mask; cannot normalise")
    return scale


def q_coordinates(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """(6, 4) q-space coordinates ``(gx, gy, gz, b / 1000)``."""
    return np.concatenate([bvecs, bvals[:, None] / 1000.0], axis=1).astype(np.float32)


def make_input(b0: np.ndarray, dwis: np.ndarray, scale: float) -> np.ndarray:
    """(6, 2, X, Y, Z) normalised (b0, DWI_i) pairs from b0 (X, Y, Z) and dwis (X, Y, Z, 6)."""
    b0 = np.broadcast_to(b0[None] / scale, (N_DWI, *b0.shape))
    return np.stack([b0, np.moveaxis(dwis, -1, 0) / scale], axis=1).astype(np.float32)


class PatchDataset(EpochDataset):
    """Random patches with a random b0 and six-DWI set, a pure function of (seed, epoch, index).

    Parameters
    ----------
    subjects : list of QCGSubject
    n_samples : int
        Patches per epoch.
    patch : int
        Patch edge in voxels.
    scheme : {"flexible", "fixed"}
    seed : int
    augment : bool
        Shuffle pairs, flip direction signs and patch axes.
    per_epoch : bool
        Draw new patches every epoch (training) or the same ones (validation).
    target : {"all-shells", "shell"}
        The reference the patch's tensors are: the fit on all volumes, or the fit of the six
        DWIs' shell alone (see the module's docstring).
    """

    def __init__(self, subjects: list[QCGSubject], n_samples: int, patch: int = 32, scheme: str = "flexible",
                 seed: int = 0, augment: bool = True, per_epoch: bool = True, target: str = "all-shells"):
        if scheme not in ("flexible", "fixed"):
            raise ConfigError(f"scheme must be 'flexible' or 'fixed', got {scheme!r}")
        if target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if not subjects:
            raise ConfigError("no training subjects")
        super().__init__(n_samples, seed, per_epoch)
        if target == "shell":
            for s in subjects:
                if s.shell_reference is None or s.shell_bvals is None:
                    raise ConfigError(f"{s.name}: the per-shell target needs the subject's per-shell references "
                                      "(prepared with per_shell=True)")
                for six in (*s.pool, s.fixed):   # every set it can draw has its shell's reference
                    shell_index(s.shell_bvals, six.shell)
        self.subjects, self.patch, self.scheme, self.augment, self.target = subjects, patch, scheme, augment, target
        self._voxels = [np.argwhere(s.mask) for s in subjects]
        self._scales = [{int(i): brain_scale(s.data[..., i], s.mask) for i in s.b0_indices} for s in subjects]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self.rng(index)
        k = index % len(self.subjects)
        s, P = self.subjects[k], self.patch
        six = s.pool[rng.integers(len(s.pool))] if self.scheme == "flexible" else s.fixed
        b0_index = int(rng.choice(s.b0_indices))
        centre = self._voxels[k][rng.integers(len(self._voxels[k]))]
        lo = np.clip(centre - P // 2, 0, np.array(s.mask.shape) - P)
        box = tuple(slice(a, a + P) for a in lo)
        idx = np.array(six.indices)
        pairs = make_input(s.data[box + (b0_index,)], s.data[box][..., idx], self._scales[k][b0_index])
        q = q_coordinates(s.bvals[idx], s.bvecs[idx])
        if self.target == "shell":
            reference = s.shell_reference[box + (shell_index(s.shell_bvals, six.shell),)]
        else:
            reference = s.reference[box]
        target = np.moveaxis(reference, -1, 0) * TENSOR_SCALE
        mask = s.mask[box].astype(np.float32)
        if self.augment:
            pairs, q, target, mask = _augment(rng, pairs, q, target, mask)
        return {"pairs": torch.from_numpy(np.ascontiguousarray(pairs)), "q": torch.from_numpy(q),
                "target": torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask))}


def _augment(rng: np.random.Generator, pairs, q, target, mask):
    order = rng.permutation(N_DWI)
    pairs, q = pairs[order], q[order].copy()
    q[:, :3] *= rng.choice([-1.0, 1.0], size=(N_DWI, 1)).astype(np.float32)
    target = target.copy()
    for axis in range(3):
        if rng.random() < 0.5:
            pairs, target, mask = np.flip(pairs, 2 + axis), np.flip(target, 1 + axis), np.flip(mask, axis)
            q[:, axis] *= -1
            target[list(_FLIP_SIGNS[axis])] *= -1
    return pairs, q, target, mask


RELATIVE_OFFSET = 0.5   # um^2/ms added to the true MD in the relative loss's scale
ANISOTROPY_WEIGHT = 10.0  # "anisotropic" loss: the relative error times 1 + 10 FA^2 of the true tensor
FA_WEIGHT, SHAPE_WEIGHT = 1.0, 1.0   # "decomposed" loss: its FA and orientation terms against the MD term
WM_FA = 0.4               # true FA above which a voxel counts as white matter in the logged FA bias
FA_BIN_EDGES = FA_BINS[1:-1]   # "balanced" loss: the benchmark's bins of the true FA, weighed alike


def _fa(lt: torch.Tensor) -> torch.Tensor:
    """FA (B, X, Y, Z) of tensors given as (B, 6, X, Y, Z) elements in DIPY order (eigenvalues clipped at 0)."""
    evals = torch.linalg.eigvalsh(T.from_lower_triangular(lt.movedim(1, -1).float())).clamp_min(0.0)
    return T.fractional_anisotropy(evals).to(lt.dtype)


def _bin_weights(fa: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-voxel weights that give every occupied true-FA bin of the masked voxels the same total; mean 1."""
    edges = torch.tensor(FA_BIN_EDGES, dtype=fa.dtype, device=fa.device)
    bins = torch.bucketize(fa.detach(), edges, right=True)     # lo <= fa < hi, as the benchmark bins
    counts = torch.zeros(len(FA_BIN_EDGES) + 1, dtype=fa.dtype, device=fa.device).index_add_(
        0, bins.flatten(), mask.flatten().to(fa.dtype))
    occupied = (counts > 0).sum().clamp_min(1)
    return mask.sum() / (occupied * counts.clamp_min(1.0))[bins]


class QCGTask:
    """The trainer's task: the error of the predicted tensors over masked voxels.

    - ``loss="mse"``: squared error of the six elements. It weighs every voxel alike, so free
      water and CSF (MD about 3 um^2/ms, the largest and noisiest elements) dominate it.
    - ``loss="relative"``: each voxel's squared error over ``(MD + 0.5 um^2/ms)^2`` of its true
      tensor, an error relative to the voxel's diffusivity, as FA (scale-free) sees it: white
      matter (MD about 0.7) weighs about eight times more than CSF.
    - ``loss="anisotropic"``: the relative error times ``1 + 10 FA^2`` of the true tensor. In a
      patch most voxels are grey matter or CSF, where a smooth isotropic guess is nearly
      optimal, and the relative loss alone barely sees white-matter anisotropy (a network with
      random directions scored best on it; see the weights README).
    - ``loss="balanced"``: the decomposed terms, each voxel weighed by one over the number of
      voxels of its true-FA bin in the batch (bins 0-0.2, ..., 0.8-1), so every bin counts alike.
      A brain mask is mostly isotropic, and a loss over its voxels buys FA accuracy there at
      the cost of a white-matter bias; the benchmark judges the bias bin by bin.
    - ``loss="decomposed"``: the tensor split into what a user reads off it, each with its own
      term: the relative MD error squared, the FA error squared, and the squared distance
      between the unit deviatoric parts (orientation and shape) weighted by the true FA^2
      (orientation is undefined in isotropic voxels). Any squared error on the elements is
      minimised, where the direction is uncertain, by the average of the plausible tensors,
      which is less anisotropic than each: that is the FA underestimate of the other losses
      (-0.24 in white matter for the shipped network). Here the FA term alone sets the size
      of the anisotropy, so direction uncertainty cannot shrink it.

    Every loss also logs the RMSE of the elements, the FA error and the mean FA bias of the
    voxels whose true FA is above 0.4: per batch, then averaged over the batches (one without
    such voxels counts 0). A monitor of the white-matter bias, pooled over FA; the benchmark
    measures it bin by bin.
    """

    collate = staticmethod(default_collate)

    def __init__(self, loss: str = "mse"):
        if loss not in LOSSES:
            raise ConfigError(f"QCG-DTI loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        self.kind = loss

    def loss(self, model, batch, generator=None) -> tuple[torch.Tensor, dict[str, float]]:
        pred = model(batch["pairs"], batch["q"]).float()
        target = batch["target"].float()
        mask = batch["mask"]
        n = mask.sum().clamp_min(1.0)
        se = (pred - target).square() * mask[:, None]
        rmse = float((se.sum() / (n * pred.shape[1])).detach().sqrt())
        md_t, fa_t, shape_t = tensor_parts(target)
        with torch.enable_grad() if self.kind in ("decomposed", "balanced") else torch.no_grad():
            md_p, fa_p, shape_p = tensor_parts(pred)   # for the other losses, only a metric
        if self.kind in ("decomposed", "balanced"):
            per_voxel = ((md_p - md_t) / (md_t.clamp_min(0.0) + RELATIVE_OFFSET)).square() \
                + FA_WEIGHT * (fa_p - fa_t).square() \
                + SHAPE_WEIGHT * fa_t.square() * frobenius2(shape_p - shape_t)
            weight = mask if self.kind == "decomposed" else mask * _bin_weights(fa_t, mask)
            loss = (per_voxel * weight).sum() / n
        else:
            if self.kind in ("relative", "anisotropic"):
                se = se / (md_t.clamp_min(0.0) + RELATIVE_OFFSET).square()[:, None]
            if self.kind == "anisotropic":   # white matter counts up to 11 times an isotropic voxel
                se = se * (1.0 + ANISOTROPY_WEIGHT * _fa(target).square())[:, None]
            loss = se.sum() / (n * pred.shape[1])
        with torch.no_grad():
            wm = mask * (fa_t > WM_FA)
            fa_err = (fa_p - fa_t) * mask
            metrics = {"rmse_um2_ms": rmse, "fa_mae": float(fa_err.abs().sum() / n),
                       "fa_bias_wm": float((fa_err * wm).sum() / wm.sum().clamp_min(1.0))}
        return loss, metrics
