"""A differentiable connectome: streamline ends softly assigned to parcels.

Each end ``x`` gets a weight per parcel ``p`` from a Gaussian kernel on its distance to the
parcel, ``w_p = exp(-d_p(x)^2 / (2 sigma^2))`` (``d_p`` from :class:`DistanceMaps`, zero inside
the parcel), normalised over the parcels and a "no parcel" option whose distance is
``background_mm`` (``w_0 = exp(-background^2 / (2 sigma^2))``): ``a_p = w_p / (w_0 + sum_q w_q)``.
An end inside one parcel and far from the others counts ``1 / (1 + w_0)`` there (0.989
with the default ``background_mm = 3 sigma``); near a border it is shared with the
neighbour (half and half on the border), and one far from every parcel counts nowhere. Each streamline then adds ``a^T b`` (its
two ends' assignments) to the matrix and its transpose, so a streamline with hard ends
``i != j`` adds 1 to ``C[i, j]`` and ``C[j, i]``, and one with both ends in ``i`` adds 1 to
``C[i, i]`` (MRtrix's symmetric count). The matrix is a smooth function of the end points
and of per-streamline weights, so it can sit inside a loss.

Memory: the maps are dense, ``(X, Y, Z, P)`` floats: 1.2 GB for 84 parcels on a 1.25 mm
HCP grid (145 x 174 x 145). For large parcellations, crop the grid to the brain first.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .distance import DistanceMaps


class Parcellation:
    """A label volume as distance maps, one per label.

    Parameters
    ----------
    labels : (X, Y, Z) int array
        Parcel labels; 0 is background.
    voxel_sizes : sequence of 3 float
    sigma_mm : float
        Width of the Gaussian kernel.
    background_mm : float, optional
        Distance of the "no parcel" option (default ``3 * sigma_mm``); ``math.inf`` leaves it
        out (every end is then shared among the parcels).
    """

    def __init__(self, labels, voxel_sizes, sigma_mm: float = 2.0, background_mm: float | None = None,
                 dtype: torch.dtype = torch.float32):
        labels = np.asarray(labels)
        if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"parcel labels must be a 3D integer volume, got {labels.dtype} {labels.shape}")
        if not sigma_mm > 0:
            raise ConfigError(f"sigma_mm must be positive, got {sigma_mm}")
        self.labels = [int(v) for v in np.unique(labels) if v != 0]
        if not self.labels:
            raise ConfigError("the parcellation has no labels other than 0")
        self.maps = DistanceMaps([labels == v for v in self.labels], voxel_sizes, dtype=dtype)
        self.sigma_mm = float(sigma_mm)
        self.background_mm = 3 * self.sigma_mm if background_mm is None else float(background_mm)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device=None, dtype=None) -> Parcellation:
        """A copy whose maps live on ``device`` (in ``dtype``)."""
        out = object.__new__(Parcellation)
        out.__dict__.update(self.__dict__)
        out.maps = self.maps.to(device, dtype)
        return out

    def assign(self, points: torch.Tensor) -> torch.Tensor:
        """Soft assignments ``(N, P)`` of points ``(N, 3)`` (voxel coordinates)."""
        return soft_assign(self.maps.sample(points), self.sigma_mm, self.background_mm)

    def connectome(self, ends: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(P, P)`` matrix of streamlines with ends ``(S, 2, 3)`` (and optional weights ``(S,)``)."""
        return connectome(self.assign(ends[:, 0]), self.assign(ends[:, 1]), weights)


def soft_assign(distances: torch.Tensor, sigma_mm: float, background_mm: float | None = None) -> torch.Tensor:
    """Gaussian-kernel assignments ``(N, P)`` from distances ``(N, P)`` in mm (see the module docstring).

    ``background_mm`` defaults to ``3 * sigma_mm``; ``math.inf`` leaves the "no parcel" option out.
    """
    background_mm = 3 * sigma_mm if background_mm is None else background_mm
    logits = -distances ** 2 / (2 * sigma_mm ** 2)
    if background_mm == float("inf"):
        return torch.softmax(logits, dim=1)
    bg = logits.new_full((len(logits), 1), -background_mm ** 2 / (2 * sigma_mm ** 2))
    return torch.softmax(torch.cat([logits, bg], dim=1), dim=1)[:, :-1]


def connectome(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric connectivity ``(P, P)`` from the two ends' assignments ``a, b (S, P)``."""
    if weights is not None:
        a = a * weights[:, None]
    c = a.T @ b
    return c + c.T - torch.diag(torch.diagonal(c))
