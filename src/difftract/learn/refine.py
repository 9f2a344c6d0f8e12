"""Demonstration 1: refine a tensor field by gradient descent through the propagator.

Given a (noisy) tensor field and reference streamlines, every iteration cuts a batch of
reference streamlines at random seeds (:func:`reference_halves`), propagates both halves
through the field's principal directions (:func:`tensor_peaks`, the differentiable ``peak``
rule, RK4 by default), and takes an Adam step on the tensor elements to lower

    loss = StreamlineLoss(paths, references) + fidelity * |lt - lt0|^2 / |lt0|^2
                                             + smoothness * |grad lt|^2 / |lt0|^2

(the squared norms averaged over the peak mask, ``grad`` the differences between
neighbouring voxels both in the mask): the streamline loss pulls the directions along the
references, the fidelity term keeps the tensors near what the scan measured, and the
smoothness term spreads the correction to the voxels between the references (without it
a per-voxel field fits the references it sees and little else).
The references are where the field should lead (a high-quality acquisition's tractogram, an
atlas bundle, or a phantom's ground truth); the refined field is then tracked from seeds
of its own (:func:`track_tensor_field`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..tracking.getters import PeakGetter
from ..tracking.stopping import BinaryCriterion
from ..tracking.tracker import Tracker, TrackingParams
from .directions import tensor_peaks
from .losses import StreamlineLoss
from .propagate import propagate_both
from .references import reference_halves


@dataclass
class RefineConfig:
    """Settings of :func:`refine_tensor_field`; lengths in mm, angles in degrees."""

    iterations: int = 300
    seeds_per_iteration: int = 256
    n_steps: int = 64                 # steps per half
    step_mm: float | None = None      # None: the smallest voxel size
    integrator: str = "rk4"
    max_angle: float = 60.0
    lr: float = 0.01                  # Adam, on elements divided by the mean diffusivity in the peak mask
    fidelity: float = 0.1
    smoothness: float = 0.0
    power_iterations: int = 8
    checkpoint_every: int | None = None
    truncate_every: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.iterations < 1 or self.seeds_per_iteration < 1 or self.n_steps < 1:
            raise ConfigError("iterations, seeds_per_iteration and n_steps must be at least 1")
        if not (self.lr > 0 and self.fidelity >= 0 and self.smoothness >= 0):
            raise ConfigError(f"need lr > 0, fidelity >= 0 and smoothness >= 0, got {self.lr}, {self.fidelity} "
                              f"and {self.smoothness}")


@dataclass
class RefineResult:
    """The refined elements ``lt (X, Y, Z, 6)`` (units of the input) and one history row per iteration."""

    lt: np.ndarray
    history: list[dict]


def refine_tensor_field(lt0, stop_mask, streamlines: list[np.ndarray], voxel_sizes, config: RefineConfig | None = None,
                        *, loss: StreamlineLoss | None = None, bundles: np.ndarray | None = None,
                        peak_mask=None, log: Callable[[dict], None] | None = None,
                        device: str | torch.device = "cpu") -> RefineResult:
    """Refine tensor elements ``lt0 (X, Y, Z, 6)`` towards reference ``streamlines`` (voxel space).

    Parameters
    ----------
    lt0 : array (X, Y, Z, 6)
        DIPY-ordered tensor elements, in any unit: they are divided by their mean
        diffusivity in the peak mask for the optimisation (so ``lr`` is relative) and the
        result is given back in the input's unit.
    stop_mask : (X, Y, Z) bool
        Tracking stops at the first point whose nearest voxel is outside.
    streamlines : list of (n_i, 3) arrays
    loss : StreamlineLoss, optional
        Default: the point-to-point loss alone.
    bundles : (len(streamlines),) int, optional
        Bundle of each reference (needed by endpoint and mask terms).
    peak_mask : (X, Y, Z) bool, optional
        Voxels that offer a direction (default: ``stop_mask``).
    log : callable, optional
        Receives each history row.
    device : str or torch.device
    """
    from ..device import resolve_device

    config = config or RefineConfig()
    device = resolve_device(device)
    sizes = np.asarray(voxel_sizes, dtype=np.float64)
    step_mm = float(config.step_mm or sizes.min())
    loss = loss or StreamlineLoss(tuple(sizes))
    lt0 = torch.as_tensor(np.asarray(lt0), dtype=torch.float32, device=device)
    stop = torch.as_tensor(np.asarray(stop_mask, dtype=bool), device=device)
    pmask = stop if peak_mask is None else torch.as_tensor(np.asarray(peak_mask, dtype=bool), device=device)
    if lt0.shape != (*stop.shape, 6):
        raise ConfigError(f"tensor elements {tuple(lt0.shape)} do not match the mask {tuple(stop.shape)} (+6)")
    if not pmask.any():
        raise ConfigError("the peak mask is empty")
    unit = float(lt0[pmask][:, [0, 2, 5]].mean())
    if not (np.isfinite(unit) and unit > 0):
        raise ConfigError(f"the tensors' mean diffusivity in the mask is {unit}; expected a positive number")
    lt0 = lt0 / unit
    lt = lt0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([lt], lr=config.lr)
    criterion = BinaryCriterion(stop).to(device)
    rng = np.random.default_rng(config.seed)
    m = pmask[..., None].float()
    scale = (lt0.square() * m).sum().clamp(min=1e-12)
    history = []
    for it in range(1, config.iterations + 1):
        t0 = time.perf_counter()
        refs = reference_halves(streamlines, config.seeds_per_iteration, config.n_steps, step_mm=step_mm,
                                voxel_sizes=sizes, rng=rng, bundles=bundles).to(device, torch.float32)
        getter = PeakGetter(tensor_peaks(lt, pmask, config.power_iterations), config.max_angle)
        paths = propagate_both(getter, refs.seeds, refs.dirs, config.n_steps, step_mm=step_mm, voxel_sizes=sizes,
                               integrator=config.integrator, criterion=criterion,
                               checkpoint_every=config.checkpoint_every, truncate_every=config.truncate_every)
        value, parts = loss(paths, refs)
        fidelity = ((lt - lt0).square() * m).sum() / scale
        rough = roughness(lt, pmask) / scale * m.sum()
        total = value + config.fidelity * fidelity + config.smoothness * rough
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        row = {"iteration": it, "loss": float(total.detach()), **parts, "fidelity": float(fidelity.detach()),
               "roughness": float(rough.detach()),
               "length_mm": float((paths.length - 1).float().mean() * step_mm), "seconds": time.perf_counter() - t0}
        history.append(row)
        if log is not None:
            log(row)
    return RefineResult((lt.detach() * unit).cpu().numpy(), history)


def roughness(lt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``lt (X, Y, Z, 6)`` between face neighbours both in ``mask``."""
    total, count = lt.new_zeros(()), 0
    for axis in range(3):
        n = lt.shape[axis]
        a, b = lt.narrow(axis, 0, n - 1), lt.narrow(axis, 1, n - 1)
        both = (mask.narrow(axis, 0, n - 1) & mask.narrow(axis, 1, n - 1))[..., None].to(lt.dtype)
        total = total + ((a - b).square() * both).sum()
        count += int(both.sum())
    return total / max(count, 1)


def track_tensor_field(lt, stop_mask, seeds, voxel_sizes, params: TrackingParams | None = None, *,
                       max_angle: float = 60.0, peak_mask=None, seed: int = 0) -> list[np.ndarray]:
    """Track a tensor field's principal directions (the ``peak`` rule) from ``seeds (N, 3)``: voxel-space streamlines."""
    stop = np.asarray(stop_mask, dtype=bool)
    pmask = torch.as_tensor(stop if peak_mask is None else np.asarray(peak_mask, dtype=bool))
    with torch.no_grad():
        peaks = tensor_peaks(torch.as_tensor(np.asarray(lt), dtype=torch.float32), pmask)
    tracker = Tracker(PeakGetter(peaks, max_angle), BinaryCriterion(stop), voxel_sizes, params or TrackingParams())
    return [s.numpy() for chunk in tracker.track(torch.as_tensor(seeds), seed=seed) for s in chunk.split()]

