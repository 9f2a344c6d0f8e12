"""DDTracking's denoiser: a 1D-convolutional encoder-decoder of FiLM-modulated residual blocks.

The noisy direction ``y_k`` (3 numbers) is read as a one-channel signal of length 3, lifted
to ``width`` channels, then passed through an encoder (``width -> 2 width``), a middle
block, and a decoder that concatenates the encoder's outputs (U-Net skips) on the way back
to ``width``. Convolutions have kernel 3 with same padding, so every block sees the whole
vector. Each block is modulated by FiLM (per-channel ``x (1 + scale) + shift``) from two
conditions, fed separately:

- the global condition ``G = [c_t, emb(k)]`` (streamline context and diffusion time);
- the local condition ``L = v_t`` (the point's own spatial encoding), absent in the
  ``spatial_temporal_generative`` variant.

Two 1x1-convolution heads give ``h_pred`` and ``eps_pred``; with ``one_head`` there is only
the ``h`` head (the caller derives ``eps``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FiLM(nn.Module):
    """``x * (1 + scale(cond)) + shift(cond)`` per channel; starts as the identity."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.proj(cond)[..., None].chunk(2, dim=1)
        return x * (1.0 + scale) + shift


class FiLMResBlock(nn.Module):
    """conv-norm-act, FiLM(G), FiLM(L), conv; plus a (1x1 when widths differ) skip."""

    def __init__(self, c_in: int, c_out: int, g_dim: int, l_dim: int | None):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(min(8, c_out), c_out)
        self.film_g = FiLM(g_dim, c_out)
        self.film_l = FiLM(l_dim, c_out) if l_dim else None
        self.conv2 = nn.Conv1d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, c_out), c_out)
        self.act = nn.SiLU()
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, g: Tensor, l: Tensor | None) -> Tensor:
        h = self.film_g(self.norm1(self.conv1(x)), g)
        if self.film_l is not None:
            h = self.film_l(h, l)
        h = self.conv2(self.act(h))
        return self.act(self.norm2(h) + self.skip(x))


class Denoiser(nn.Module):
    """``(y_k (N, 3), G (N, g_dim), L (N, l_dim) or None) -> (h_pred, eps_pred or None)``."""

    def __init__(self, width: int, g_dim: int, l_dim: int | None, one_head: bool = False):
        super().__init__()
        w = width
        self.lift = nn.Conv1d(1, w, 1)
        self.enc1 = FiLMResBlock(w, w, g_dim, l_dim)
        self.enc2 = FiLMResBlock(w, 2 * w, g_dim, l_dim)
        self.mid = FiLMResBlock(2 * w, 2 * w, g_dim, l_dim)
        self.dec2 = FiLMResBlock(4 * w, w, g_dim, l_dim)
        self.dec1 = FiLMResBlock(2 * w, w, g_dim, l_dim)
        self.head_h = nn.Conv1d(w, 1, 1)
        self.head_eps = None if one_head else nn.Conv1d(w, 1, 1)

    def forward(self, y: Tensor, g: Tensor, l: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x = self.lift(y[:, None, :])
        e1 = self.enc1(x, g, l)
        e2 = self.enc2(e1, g, l)
        m = self.mid(e2, g, l)
        d2 = self.dec2(torch.cat([m, e2], dim=1), g, l)
        d1 = self.dec1(torch.cat([d2, e1], dim=1), g, l)
        h = self.head_h(d1)[:, 0]
        return h, (self.head_eps(d1)[:, 0] if self.head_eps is not None else None)
