"""Tensors from a trained QCG-DTI network: the DIPY-style model/fit pair.

``QCGTensorModel(weights).fit(data, bvals, bvecs, mask, six=...)`` returns the same
:class:`~difftract.reconst.dti.TensorFit` as the WLS model, so every map and writer works
unchanged. The volume is covered by overlapping patches of the training size (so the
QCF's global pooling sees what it saw in training, and memory stays bounded); overlapping
predictions are blended with a window that falls towards the patch edges.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from ...device import resolve_device
from ...errors import ConfigError
from ...io.gradients import B0_THRESHOLD
from ...reconst import tensor as T
from ...reconst.dti import EIGENVALUE_TOL, TensorFit
from ...reconst.fa_bias import fa_corrected, noise_sigma, with_corrected_fa
from ...reconst.voxels import MaskedSignal, volume_array
from .data import brain_scale, make_input, pad_to, q_coordinates, reference_fit
from ...training.domain import scan_report
from .model import N_DWI, TENSOR_SCALE, QCGDTI, build_model
from .schemes import SixSet, check_six


def load_qcgdti(weights: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[QCGDTI, dict]:
    """The network and its weights-file metadata; ``None`` loads the shipped weights."""
    from ...training.files import load_model
    from ...weights import shipped_weights

    path = shipped_weights("qcgdti") if weights is None else Path(weights)
    model, meta = load_model(path, "qcgdti", "QCG-DTI", build_model)
    device = resolve_device(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last_3d)   # faster 3D convolutions on CPU
    return model.to(device).eval(), meta


def _window(patch: int) -> np.ndarray:
    """A separable blending weight, 1 in the middle, small but positive at the edges."""
    ramp = np.minimum(np.arange(patch) + 1, patch - np.arange(patch)) / (patch / 2)
    w1 = np.clip(ramp, 0.05, 1.0)
    return (w1[:, None, None] * w1[None, :, None] * w1[None, None, :]).astype(np.float32)


def _starts(size: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


class QCGTensorModel:
    """QCG-DTI as a tensor model.

    Parameters
    ----------
    model : QCGDTI
        A trained network (see :func:`load_qcgdti`).
    patch : int
        Patch edge used in training.
    device : str or torch.device
    """

    def __init__(self, model: QCGDTI, patch: int = 32, device: str | torch.device = "cpu", meta: dict | None = None):
        self.model, self.patch, self.device = model, int(patch), resolve_device(device)
        self.meta = meta or {}

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, device: str | torch.device = "cpu") -> "QCGTensorModel":
        model, meta = load_qcgdti(weights, device)
        return cls(model, meta.get("patch", 32), device, meta)

    @property
    def params(self) -> dict:
        return {"model": "DTI", "fit_method": "QCG-DTI", "variant": self.model.config.variant,
                "weights": self.meta.get("path"), "weights_sha256": self.meta.get("sha256"),
                # what the network's tensors approximate: the shipped one, the tensor of the input's shell
                "trained_against": self.meta.get("reference"), "tensor_order": list(T.DIPY_ORDER), "units": "mm^2/s"}

    @torch.no_grad()
    def predict(self, b0: np.ndarray, dwis: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
        """Tensor elements (X, Y, Z, 6) in mm^2/s from one b0 (X, Y, Z) and six DWIs (X, Y, Z, 6)."""
        shape = b0.shape
        mask = np.asarray(mask, dtype=bool)
        if dwis.shape != (*shape, N_DWI):
            raise ConfigError(f"expected six DWIs of shape {(*shape, N_DWI)}, got {dwis.shape}")
        P, multiple = self.patch, self.model.config.multiple
        pairs = make_input(pad_to(b0, P, multiple), pad_to(dwis, P, multiple), brain_scale(b0, mask))
        q = torch.as_tensor(q_coordinates(bvals, bvecs), device=self.device)[None]
        size = pairs.shape[2:]
        out = np.zeros((N_DWI, *size), np.float32)
        weight = np.zeros(size, np.float32)
        window = _window(P)
        padded_mask = pad_to(mask, P, multiple)
        for corner in itertools.product(*(_starts(s, P, P // 2) for s in size)):
            box = tuple(slice(c, c + P) for c in corner)
            if not padded_mask[box].any():
                continue
            x = torch.as_tensor(pairs[(slice(None), slice(None)) + box], device=self.device)[None]
            out[(slice(None),) + box] += self.model(x, q)[0].float().cpu().numpy() * window
            weight[box] += window
        lt = np.moveaxis(out / np.maximum(weight, 1e-12), 0, -1)[: shape[0], : shape[1], : shape[2]]
        return (lt / TENSOR_SCALE * mask[..., None]).astype(np.float32)

    def fit(self, data: np.ndarray | MaskedSignal, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray,
            six: SixSet | None = None, b0_index: int | None = None, voxel_size=None,
            fa_correction: bool = False, sigma: float | None = None) -> TensorFit:
        """Fit a scan: its six DWIs (or the ``six`` chosen from many) and one b0 (the first).

        With ``fa_correction`` each voxel's FA is replaced by the noise-corrected FA of the
        seven volumes' least-squares fit
        (:func:`~difftract.reconst.fa_bias.fa_corrected`); the network's eigenvectors,
        MD and eigenvalue shape are kept. ``sigma`` is the noise's standard deviation, by
        default estimated from the scan's b0s (:func:`~difftract.reconst.fa_bias.noise_sigma`).

        ``data`` is a 4D array or a :class:`MaskedSignal` (then the seven volumes are put on
        the grid, zero outside the held voxels, and nothing else). The fit's
        ``params`` carry :func:`~difftract.training.domain.scan_report`: ``domain_warnings``
        lists what of the scan lies outside the training data (the voxel size is checked when
        given), beside the SNR and coil-count estimates it was judged by.
        """
        if mask is None:
            raise ConfigError("QCG-DTI needs a brain mask (intensities are normalised over it)")
        mask = np.asarray(mask, dtype=bool)
        bvals, bvecs = np.asarray(bvals, float), np.asarray(bvecs, float)
        b0s = np.flatnonzero(bvals <= B0_THRESHOLD)
        idx = np.array(six.indices) if six is not None else np.flatnonzero(bvals > B0_THRESHOLD)
        check_six(np.concatenate([bvals[b0s[:1]], bvals[idx]]), np.concatenate([bvecs[b0s[:1]], bvecs[idx]]))
        b0_index = int(b0s[0] if b0_index is None else b0_index)
        b0 = volume_array(data, [b0_index])[..., 0].astype(np.float32, copy=False)
        dwis = volume_array(data, idx).astype(np.float32, copy=False)
        lt = self.predict(b0, dwis, bvals[idx], bvecs[idx], mask)
        scale = np.max(bvals[idx])
        evals, evecs = T.decompose(torch.from_numpy(lt.astype(np.float64)), EIGENVALUE_TOL / scale)
        report = scan_report(self.meta.get("domain"), data, bvals, mask, bvals[idx], voxel_size)
        fit = TensorFit(evals.numpy() * mask[..., None], evecs.numpy() * mask[..., None, None], b0 * mask, mask,
                        {**self.params, "six_indices": idx.tolist(), "b0_index": b0_index, **report})
        if fa_correction:
            seven = [b0_index, *idx.tolist()]
            lsq = reference_fit(np.concatenate([b0[..., None], dwis], axis=-1), bvals[seven], bvecs[seven], mask)
            sigma = noise_sigma(volume_array(data, b0s), mask) if sigma is None else sigma
            fit = with_corrected_fa(fit, *fa_corrected(lsq, bvals[seven], bvecs[seven], sigma))
        return fit
