"""Building blocks of QCG-DTI (Zheng et al., FITEE 2025), all 3D.

- :class:`MRUnit`, multiscale residual unit: ``X + conv3(conv1(cat(relu(conv3 X), relu(conv5 X))))``.
- :class:`MRDBlock`: two MR units and a long skip over both.
- :class:`ResBlock`: the ``resnet`` ablation, two plain residual units of the same width.
- :class:`QCF`, q-space coordinate fusion: global average pooling of the features, an MLP,
  concatenation with the q-space coordinate ``(gx, gy, gz, b)``, and an MLP whose output is a
  per-channel scale and shift applied FiLM-style, ``alpha * F + beta``.
- :class:`ResizeConv`: nearest-neighbour upsampling by 2 then a 3x3x3 convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv(c_in: int, c_out: int, k: int = 3) -> nn.Conv3d:
    """A 'same' 3D convolution with an odd kernel."""
    return nn.Conv3d(c_in, c_out, k, padding=k // 2)


class MRUnit(nn.Module):
    """Multiscale residual unit: 3x3x3 and 5x5x5 branches fused by a 1x1x1 conv, then a 3x3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv3 = conv(channels, channels, 3)
        self.conv5 = conv(channels, channels, 5)
        self.fuse = conv(2 * channels, channels, 1)
        self.out = conv(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        branches = torch.cat([torch.relu(self.conv3(x)), torch.relu(self.conv5(x))], dim=1)
        return x + self.out(self.fuse(branches))


class ResUnit(nn.Module):
    """A plain residual unit ``X + conv3(relu(conv3 X))``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1, self.conv2 = conv(channels, channels), conv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class MRDBlock(nn.Module):
    """Two residual units with a long skip connection around them.

    ``unit=MRUnit`` is the MRD block; ``unit=ResUnit`` the ``resnet`` ablation's block of the
    same width and depth (:func:`ResBlock`).
    """

    def __init__(self, channels: int, unit: type[nn.Module] = MRUnit):
        super().__init__()
        self.units = nn.Sequential(unit(channels), unit(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.units(x)


def ResBlock(channels: int) -> MRDBlock:
    """The ``resnet`` ablation of :class:`MRDBlock`: plain residual units, the same long skip."""
    return MRDBlock(channels, ResUnit)


class QCF(nn.Module):
    """Q-space coordinate fusion: modulate features by a scale and shift computed from ``q``.

    Parameters
    ----------
    channels : int
        Feature channels ``C``.
    q_dim : int
        Length of the q-space coordinate (``gx, gy, gz, b`` -> 4).
    hidden : int
        Width of both MLPs.

    Notes
    -----
    The last layer starts at zero, so a fresh module is the identity (``alpha = 1``,
    ``beta = 0``) and training starts from the unmodulated network.
    """

    def __init__(self, channels: int, q_dim: int = 4, hidden: int = 32):
        super().__init__()
        self.pool_mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU())
        self.film = nn.Sequential(nn.Linear(hidden + q_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * channels))
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)

    def forward(self, features: Tensor, q: Tensor) -> Tensor:
        """``features`` (B, C, X, Y, Z) modulated by ``q`` (B, q_dim)."""
        pooled = self.pool_mlp(features.mean(dim=(2, 3, 4)))
        scale, shift = self.film(torch.cat([pooled, q], dim=1)).chunk(2, dim=1)
        return (1.0 + scale)[..., None, None, None] * features + shift[..., None, None, None]


class ResizeConv(nn.Module):
    """Upsample by 2 (nearest neighbour) and convolve: no checkerboard artefacts."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = conv(c_in, c_out, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
