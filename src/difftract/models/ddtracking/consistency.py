"""A training penalty that teaches DDTracking the symmetries of the voxel grid it should have.

Training windows turned by one of the 48 grid symmetries (``--augment``, :mod:`.augment`) are
as likely as the windows themselves, so the best network is equivariant: turning its input
by ``R`` turns its output by ``R``. Ours learns that only as far as the samples teach it: on
the validation phantoms, turning the input and the output back moves its direction by a
median 4-6 degrees, about its whole error against the truth
(``benchmarks/measure_equivariance.py``). Averaging each tracking step over a group of
symmetries (``track --symmetries``, :mod:`.symmetrise`) removes that gap at one network copy
per member.

This penalty asks the network to close the gap itself, at one copy. Each batch is run twice
in one call, as it is and turned by a random symmetry ``R`` (not the identity): the
neighbourhoods, the previous and target directions, and the diffusion's noise and noisy
direction ``y_k`` turned, at the same diffusion time ``k``. The diffusion loss is the mean
over both halves, and the penalty is ``mean |R^T h(R x) - h(x)|^2`` on the predicted ``h``
(``-y_0``, what the deterministic sampler returns). Both halves get its gradient. The turn
runs outside mixed precision, so that both halves read the same numbers.

The validation loss (which picks the best epoch and drives the schedule) is this whole loss,
penalty included, so it is not comparable with a run without the penalty; the metrics log its
parts (``loss_h``, ``loss_eps``, ``equivariance``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import diffusion
from .augment import grid_symmetries_for


def random_symmetry(generator: torch.Generator | None, device) -> int:
    """A grid symmetry drawn uniformly from the 47 that are not the identity (index 0)."""
    on = generator.device if generator is not None else device
    return int(torch.randint(1, 48, (1,), generator=generator, device=on))


def consistent_loss(model, batch: dict[str, Tensor], k: Tensor, eps: Tensor, weight: float,
                    max_weight: float, g: int) -> tuple[Tensor, Tensor, dict[str, float]]:
    """The diffusion loss over the batch and its turn by symmetry ``g``, plus ``weight`` times the penalty.

    Returns the loss, the one-shot estimate of the unturned half (``-h``) and the loss parts,
    with ``equivariance`` (the penalty) and ``equivariance_deg`` (the mean angle between the
    two halves' ``h``).
    """
    target, P = batch["target"], len(batch["target"])
    symmetries = grid_symmetries_for(int(batch["patches"].shape[1]))
    with torch.autocast(target.device.type, enabled=False):   # the turn exact, not rounded by AMP
        patches, prev, turned_target = symmetries.apply(g, batch["patches"], batch["prev"], target)
        Rt = symmetries.Rt[g].to(device=target.device, dtype=target.dtype)   # d -> R d on row vectors
        y = diffusion.diffuse(target, k, eps)
        turned_y, turned_eps = y @ Rt, eps @ Rt
    out = model(torch.cat([batch["patches"], patches]), torch.cat([batch["prev"], prev]),
                torch.cat([batch["lengths"], batch["lengths"]]), torch.cat([y, turned_y]), torch.cat([k, k]))
    loss, parts = diffusion.decoupled_loss(out["h"], out["eps"], -torch.cat([target, turned_target]),
                                           torch.cat([eps, turned_eps]), torch.cat([k, k]), max_weight)
    with torch.autocast(target.device.type, enabled=False):
        h, h_turned_back = out["h"][:P].float(), out["h"][P:].float() @ Rt.T.float()
        penalty = (h_turned_back - h).pow(2).sum(-1).mean()
    a, b = h.detach(), h_turned_back.detach()
    angle = torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1))   # exact near 0, unlike acos
    parts = {**parts, "equivariance": float(penalty.detach()), "equivariance_deg": float(torch.rad2deg(angle).mean())}
    return loss + weight * penalty, -h, parts
