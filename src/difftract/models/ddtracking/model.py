"""The DDTracking network: spatial encoder, temporal GRU, and a diffusion denoiser or a regression head.

Variants (the paper's ablations, ``--variant``):

==============================  =========================================================
``temporal``                    GRU over the ``z`` branch only; an MLP regresses the direction
                                from ``c_t``.
``spatial_temporal``            both encoders; the MLP regresses from ``[c_t, v_t]``.
``spatial_temporal_generative`` the diffusion denoiser, conditioned on ``G = [c_t, emb(k)]``
                                only (no local condition).
``full``                        the denoiser conditioned on ``G`` and ``L = v_t``.
==============================  =========================================================

Training sees packed points: ``patches (P, m, 3, 3, 3)``, ``prev (P, 3)`` and per-streamline
``lengths (B,)`` with ``sum(lengths) = P``, streamline after streamline. Tracking calls
:meth:`DDTracking.step` once per point and :meth:`DDTracking.direction` to draw the next
direction (:mod:`.diffusion`'s sampler for the generative variants).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import ConfigError
from ...reconst.sh import lmax_from_ncoeffs
from . import diffusion
from .denoiser import Denoiser
from .encoders import SpatialEncoder, TemporalEncoder, time_embedding

VARIANTS = ("temporal", "spatial_temporal", "spatial_temporal_generative", "full")
INPUTS = ("signal", "fodf")    # what the n_coeffs input channels hold (:func:`.data.input_sh`)


@dataclass
class DDTrackingConfig:
    """Architecture; the defaults are the paper's sizes."""

    variant: str = "full"
    n_coeffs: int = 28               # descoteaux07 lmax 6
    conv_channels: int = 32          # each spatial branch's Conv3d
    mlp_hidden: int = 256            # each spatial branch's MLP
    z_dim: int = 192
    v_dim: int = 192
    gru_hidden: int = 512
    gru_layers: int = 2
    time_dim: int = 128              # sinusoidal embedding of k
    denoiser_width: int = 64
    one_head: bool = False           # predict h only (eps derived from it)
    input: str = "signal"            # the signal SH (the paper) or the CSD fODF SH; weights without it read signal

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown DDTracking variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.input not in INPUTS:
            raise ConfigError(f"unknown DDTracking input {self.input!r}; expected one of {', '.join(INPUTS)}")
        sizes = {k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool)}
        bad = [k for k, v in sizes.items() if v < 1]
        if bad:
            raise ConfigError(f"DDTracking sizes must be positive: {', '.join(bad)}")
        try:
            lmax_from_ncoeffs(self.n_coeffs)
        except ValueError as exc:
            raise ConfigError(f"n_coeffs: {exc}") from None
        if self.time_dim % 2:
            raise ConfigError(f"time_dim must be even, got {self.time_dim}")

    @property
    def generative(self) -> bool:
        return self.variant in ("spatial_temporal_generative", "full")

    @property
    def local(self) -> bool:
        """Whether the ``v`` branch exists (and conditions the head)."""
        return self.variant in ("spatial_temporal", "full")

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.input == "signal":   # as written before the option existed: older checkpoints still resume
            del d["input"]
        return d


class DDTracking(nn.Module):
    """See the module docstring."""

    def __init__(self, config: DDTrackingConfig | None = None):
        super().__init__()
        self.config = c = config or DDTrackingConfig()
        self.spatial = SpatialEncoder(c.n_coeffs, c.conv_channels, c.mlp_hidden, c.z_dim, c.v_dim, c.local)
        self.temporal = TemporalEncoder(c.z_dim, c.gru_hidden, c.gru_layers)
        l_dim = c.v_dim if c.local else None
        if c.generative:
            self.denoiser = Denoiser(c.denoiser_width, c.gru_hidden + c.time_dim, l_dim, c.one_head)
        else:
            head_in = c.gru_hidden + (c.v_dim if c.local else 0)
            self.head = nn.Sequential(nn.Linear(head_in, 256), nn.GELU(), nn.Linear(256, 3))

    # ------------------------------------------------------------------ training
    def forward(self, patches: Tensor, prev: Tensor, lengths: Tensor, y_k: Tensor | None = None,
                k: Tensor | None = None) -> dict[str, Tensor]:
        """Predictions at every packed point.

        Generative variants need ``y_k (P, 3)`` and ``k (P, 1)`` and return ``h`` and
        ``eps``; regression variants return ``direction`` (not normalised).
        """
        c, v = self.contexts(patches, prev, lengths)
        if not self.config.generative:
            return {"direction": self._regress(c, v)}
        if y_k is None or k is None:
            raise ConfigError("the generative variants need y_k and k")
        h, eps = self.denoise(y_k, k, c, v)
        return {"h": h, "eps": eps}

    def contexts(self, patches: Tensor, prev: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor | None]:
        """``c_t`` (P, hidden) and ``v_t`` (P, v_dim or None) of packed streamlines."""
        z, v = self.spatial(patches)
        B, T = len(lengths), int(lengths.max())
        mask = torch.arange(T, device=lengths.device)[None] < lengths[:, None]
        z_pad = z.new_zeros(B, T, z.shape[-1]).masked_scatter(mask[..., None], z)
        p_pad = prev.new_zeros(B, T, 3).masked_scatter(mask[..., None], prev)
        c, _ = self.temporal.sequence(z_pad, p_pad, lengths)
        return c[mask], v

    def denoise(self, y_k: Tensor, k: Tensor, c: Tensor, v: Tensor | None) -> tuple[Tensor, Tensor]:
        """``h_pred`` and ``eps_pred`` (derived from ``h`` in the one-head variant)."""
        g = torch.cat([c, time_embedding(k, self.config.time_dim)], dim=-1)
        h, eps = self.denoiser(y_k, g, v)
        if eps is None:
            eps = diffusion.eps_from_h(y_k, h, k)
        return h, eps

    def _regress(self, c: Tensor, v: Tensor | None) -> Tensor:
        return self.head(torch.cat([c, v], dim=-1) if v is not None else c)

    # ------------------------------------------------------------------ tracking
    def step(self, patches: Tensor, prev: Tensor, state: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Consume one point per streamline: ``c (N, hidden)``, ``v`` and the new GRU state."""
        z, v = self.spatial(patches)
        c, state = self.temporal.step(z, prev, state)
        return c, v, state

    def direction(self, c: Tensor, v: Tensor | None, steps: int = 1, stochastic: bool = False,
                  generator: torch.Generator | None = None) -> Tensor:
        """Unit directions ``(N, 3)``: the regression head's, or a sample of the reverse diffusion."""
        if not self.config.generative:
            return F.normalize(self._regress(c, v), dim=-1)
        return diffusion.sample(lambda y, k: self.denoise(y, k, c, v)[0], len(c), 3, steps=steps,
                                stochastic=stochastic, generator=generator, device=c.device, dtype=c.dtype)


def build_model(config: dict | DDTrackingConfig) -> DDTracking:
    """A network from a config or its dict (as stored in a weights file)."""
    if isinstance(config, dict):
        known = set(DDTrackingConfig.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"unknown DDTracking config keys: {', '.join(unknown)}")
        config = DDTrackingConfig(**config)
    return DDTracking(config)
