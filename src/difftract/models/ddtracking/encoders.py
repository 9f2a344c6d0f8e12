"""DDTracking's encoders: the local spatial encoder (two branches) and the temporal GRU.

- Spatial: each branch is a 3D convolution over the ``(m, 3, 3, 3)`` SH neighbourhood of
  a point followed by an MLP. One branch gives ``z_t`` (the temporal encoder's input),
  the other ``v_t`` (the denoiser's local condition); they share nothing, so the local
  condition is free to keep what the streamline history does not need.
- Temporal: a multi-layer GRU over ``[z_t, d_{t-1}]``, with ``d_{t-1}`` the unit direction of
  the step that reached the point (the seed's initial direction at the first point), giving
  the global context ``c_t``. The previous direction tells the model which way it is going,
  which the signal (symmetric under ``d -> -d``) cannot. Training runs it over padded
  sequences; tracking advances it one point per step from a kept hidden state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class SpatialBranch(nn.Module):
    """``(N, m, 3, 3, 3) -> (N, out)``: Conv3d (3x3x3, same padding), GELU, flatten, 2-layer MLP."""

    def __init__(self, n_coeffs: int, channels: int, hidden: int, out: int):
        super().__init__()
        self.conv = nn.Conv3d(n_coeffs, channels, kernel_size=3, padding=1)
        self.mlp = nn.Sequential(nn.GELU(), nn.Flatten(), nn.Linear(channels * 27, hidden), nn.GELU(),
                                 nn.Linear(hidden, out))

    def forward(self, patches: Tensor) -> Tensor:
        return self.mlp(self.conv(patches))


class SpatialEncoder(nn.Module):
    """The two branches: ``patches -> (z, v)``; ``v`` is None when the model has no local condition."""

    def __init__(self, n_coeffs: int, channels: int, hidden: int, z_dim: int, v_dim: int, local: bool):
        super().__init__()
        self.z = SpatialBranch(n_coeffs, channels, hidden, z_dim)
        self.v = SpatialBranch(n_coeffs, channels, hidden, v_dim) if local else None

    def forward(self, patches: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.z(patches), (self.v(patches) if self.v is not None else None)


class TemporalEncoder(nn.Module):
    """A GRU over ``[z_t, d_{t-1}]``; hidden states are kept as ``(N, layers, hidden)`` (row = streamline)."""

    def __init__(self, z_dim: int, hidden: int, layers: int):
        super().__init__()
        self.gru = nn.GRU(z_dim + 3, hidden, num_layers=layers, batch_first=True)
        self.layers, self.hidden = layers, hidden

    def initial(self, n: int, device=None, dtype=None) -> Tensor:
        return torch.zeros(n, self.layers, self.hidden, device=device, dtype=dtype)

    def sequence(self, z: Tensor, prev: Tensor, lengths: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Contexts ``(B, T, hidden)`` of right-padded sequences (zero past each length) and the last states."""
        x = torch.cat([z, prev], dim=-1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        h0 = None if h0 is None else h0.transpose(0, 1).contiguous()
        out, h_n = self.gru(packed, h0)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=z.shape[1])
        return out, h_n.transpose(0, 1)

    def step(self, z: Tensor, prev: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """One point for every streamline: ``c (N, hidden)`` and the new state ``(N, layers, hidden)``."""
        x = torch.cat([z, prev], dim=-1)[:, None]
        out, h_n = self.gru(x, h.transpose(0, 1).contiguous())
        return out[:, 0], h_n.transpose(0, 1)


def time_embedding(k: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding ``(N, dim)`` of diffusion times ``k`` ``(N, 1)`` in [0, 1] (scaled by 1000)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=k.device, dtype=k.dtype) / half)
    angles = 1000.0 * k * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
