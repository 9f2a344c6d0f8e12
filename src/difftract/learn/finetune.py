"""Demonstration 2: fine-tune QCG-DTI with a streamline loss added to its voxel loss.

Every sample is one whole subject volume with a six-DWI set: the network predicts the
tensor field (its training patches are 32^3, but it is fully convolutional and its global
q-space pooling changes little on a whole phantom), and the loss is

    voxel_weight * MSE(tensor, reference tensor)  +  streamline_weight * StreamlineLoss

where the streamline term propagates both halves of reference streamlines cut at random
seeds (:func:`reference_halves`) through the predicted field's principal directions
(:func:`tensor_peaks`, the ``peak`` rule, RK4), so its gradient reaches the network's
weights through the propagator. The run is the shared trainer's
(:func:`difftract.training.loop.train`): AdamW, plateau schedule, best-validation weights,
checkpoints with exact resume, DDP under torchrun; the weights file loads wherever the
shipped QCG-DTI weights do (``--weights``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..io.dwi import load_subject
from ..io.nifti import load_nifti
from ..io.tractogram import load_tractogram
from ..models.ddtracking.data import find_tractogram
from ..models.qcgdti.data import QCGSubject, brain_scale, make_input, prepare_subject, q_coordinates
from ..models.qcgdti.model import TENSOR_SCALE
from ..tracking.getters import PeakGetter
from ..tracking.stopping import BinaryCriterion
from ..training.dataset import EpochDataset
from .directions import tensor_peaks
from .losses import StreamlineLoss
from .propagate import propagate_both
from .references import reference_halves


@dataclass
class FinetuneConfig:
    """The loss and the propagation of :class:`StreamlineTask`; lengths in mm, angles in degrees."""

    voxel_weight: float = 1.0
    streamline_weight: float = 0.1
    seeds: int = 128                  # reference seeds per sample
    n_steps: int = 96                 # steps per half
    step_mm: float = 1.0
    integrator: str = "rk4"
    max_angle: float = 60.0
    robust_mm: float | None = None
    checkpoint_every: int | None = None

    def __post_init__(self):
        if self.voxel_weight < 0 or self.streamline_weight < 0 or self.voxel_weight + self.streamline_weight == 0:
            raise ConfigError("the loss weights must be non-negative and not both zero")
        if self.seeds < 1 or self.n_steps < 1 or not self.step_mm > 0:
            raise ConfigError("seeds and n_steps must be at least 1 and step_mm positive")


@dataclass
class StreamlineSubject:
    """A QCG-DTI training subject with its white-matter mask and reference streamlines (voxel space)."""

    qcg: QCGSubject
    shape: tuple[int, int, int]
    voxel_sizes: tuple[float, float, float]
    wm: torch.Tensor
    streamlines: list[np.ndarray]


def prepare_streamline_subject(directory: str | Path, *, pool_size: int = 50, seed: int = 0,
                               multiple: int = 4) -> StreamlineSubject:
    """A subject directory (``dwi.*``, ``mask.nii.gz``, ``wm.nii.gz``, a reference tractogram), prepared.

    The volumes are zero-padded at the end to a ``multiple`` of voxels (the network's
    downsampling factor), not to a patch: the whole volume is one sample.
    """
    directory = Path(directory)
    dwi = load_subject(directory)
    wm_path = directory / "wm.nii.gz"
    if not wm_path.is_file():
        raise InputError(wm_path, "not found: streamline fine-tuning needs the white-matter mask (where tracking "
                                  "may go)")
    wm = np.asarray(load_nifti(wm_path, "mask").dataobj) > 0
    if wm.shape != dwi.shape:
        raise InputError(wm_path, f"shape {wm.shape} is not the scan's {dwi.shape}")
    tract = load_tractogram(find_tractogram(directory), reference=(dwi.affine, dwi.shape))
    qcg = prepare_subject(directory, patch=1, multiple=multiple, pool_size=pool_size, seed=seed, dwi=dwi)
    sizes = tuple(float(v) for v in dwi.voxel_sizes)
    return StreamlineSubject(qcg, tuple(dwi.shape), sizes, torch.as_tensor(wm),
                             [np.asarray(s, np.float64) for s in tract.streamlines if len(s) > 1])


class SubjectSamples(EpochDataset):
    """One sample per item: a subject, a six-DWI set (flexible or the fixed one), a b0, a seed for the references.

    Parameters
    ----------
    subjects : list of StreamlineSubject
        The task's subjects (training and validation together).
    n_samples : int
    use : sequence of int, optional
        Which of ``subjects`` this set draws from (default: all), in turn.
    scheme : {"flexible", "fixed"}
    seed : int
    per_epoch : bool
        New samples every epoch (training) or the same ones (validation).
    """

    def __init__(self, subjects: list[StreamlineSubject], n_samples: int, use=None, scheme: str = "flexible",
                 seed: int = 0, per_epoch: bool = True):
        if scheme not in ("flexible", "fixed"):
            raise ConfigError(f"scheme must be 'flexible' or 'fixed', got {scheme!r}")
        self.use = list(range(len(subjects))) if use is None else [int(k) for k in use]
        if not self.use or not all(0 <= k < len(subjects) for k in self.use):
            raise ConfigError(f"use must name some of the {len(subjects)} subjects, got {use}")
        super().__init__(n_samples, seed, per_epoch)
        self.subjects, self.scheme = subjects, scheme

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        k = self.use[index % len(self.use)]
        s = self.subjects[k].qcg
        six = s.pool[rng.integers(len(s.pool))] if self.scheme == "flexible" else s.fixed
        return {"subject": k, "six": list(six.indices), "b0": int(rng.choice(s.b0_indices)),
                "seed": int(rng.integers(2 ** 31))}


class StreamlineTask:
    """The trainer's task: voxel MSE plus the streamline loss through the propagator.

    ``subjects`` are every subject the samples name (training and validation together, see
    :class:`SubjectSamples`).
    """

    def __init__(self, subjects: list[StreamlineSubject], config: FinetuneConfig | None = None,
                 loss: StreamlineLoss | None = None):
        self.subjects, self.config = subjects, config or FinetuneConfig()
        self.loss_fn = loss
        self.criteria = [BinaryCriterion(s.wm) for s in subjects]

    def collate(self, samples: list[dict]) -> list[dict]:
        return samples

    def loss(self, model, batch: list[dict], generator=None) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        total, logs = 0.0, []
        for sample in batch:
            value, parts = self._one(model, sample, device)
            total, logs = total + value, logs + [parts]
        metrics = {k: float(np.mean([p[k] for p in logs])) for k in logs[0]}
        return total / len(batch), metrics

    def _one(self, model, sample: dict, device) -> tuple[torch.Tensor, dict[str, float]]:
        c, subject = self.config, self.subjects[sample["subject"]]
        s, (X, Y, Z) = subject.qcg, subject.shape
        idx = np.array(sample["six"])
        b0 = s.data[..., sample["b0"]]
        pairs = make_input(b0, s.data[..., idx], brain_scale(b0, s.mask))
        q = q_coordinates(s.bvals[idx], s.bvecs[idx])
        pred = model(torch.as_tensor(pairs, device=device)[None], torch.as_tensor(q, device=device)[None])[0]
        mask = torch.as_tensor(s.mask, device=device)[None].to(pred.dtype)
        # the voxel term's reference is the fit on all volumes (QCG-DTI's all-shells target), even where the
        # starting weights were trained against their input's shell (the shipped ones, --target shell)
        target = torch.as_tensor(np.moveaxis(s.reference, -1, 0) * TENSOR_SCALE, device=device)
        voxel = ((pred - target).square() * mask).sum() / (mask.sum() * pred.shape[0]).clamp_min(1.0)
        parts = {"voxel_rmse_um2_ms": float(voxel.detach().sqrt())}
        total = c.voxel_weight * voxel
        if c.streamline_weight:
            # tracking needs float32 coordinates: outside autocast (bfloat16 on CUDA moves in 0.5-voxel steps)
            with torch.autocast(device.type, enabled=False):
                lt = pred[:, :X, :Y, :Z].permute(1, 2, 3, 0).float()
                wm = subject.wm.to(device)
                getter = PeakGetter(tensor_peaks(lt, wm), c.max_angle)
                refs = reference_halves(subject.streamlines, c.seeds, c.n_steps, step_mm=c.step_mm,
                                        voxel_sizes=subject.voxel_sizes, rng=np.random.default_rng(sample["seed"]))
                refs = refs.to(device, torch.float32)
                paths = propagate_both(getter, refs.seeds, refs.dirs, c.n_steps, step_mm=c.step_mm,
                                       voxel_sizes=subject.voxel_sizes, integrator=c.integrator,
                                       criterion=self.criteria[sample["subject"]].to(device),
                                       checkpoint_every=c.checkpoint_every)
                loss_fn = self.loss_fn or StreamlineLoss(subject.voxel_sizes, robust_mm=c.robust_mm)
                value, streamline_parts = loss_fn(paths, refs)
            total = total + c.streamline_weight * value
            parts.update(streamline_parts)
        return total, parts

    def meta(self) -> dict:
        return {"finetune": asdict(self.config)}
