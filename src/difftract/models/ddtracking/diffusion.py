"""Decoupled diffusion (DiffMOT's form) for one propagation direction per streamline.

Forward process, for diffusion time ``k`` in (0, 1]:

    y_k = y_0 + k h + sqrt(k) eps,   h = -y_0,   eps ~ N(0, I)

so ``y_k = (1 - k) y_0 + sqrt(k) eps``: the data fade linearly ("attenuation" ``h``) while
Brownian noise grows, and ``y_1`` is pure noise. The network predicts ``h`` and ``eps``;
the loss weighs them with ``lambda1 = (k^2 - k + 1) / k`` and
``lambda2 = (k^2 - k + 1) / (1 - k)^2``, which diverge at ``k -> 0`` and ``k -> 1``; here
both are clipped at ``max_weight`` (default 100), so training stays finite wherever ``k``
lands.

Reverse process: from ``y_k`` one step of size ``dk`` draws ``y_{k-dk}`` from the
Brownian-bridge posterior given the predicted ``y_0 = -h``:

    mean = (k - dk) / k * y_k - dk / k * h_pred,    variance = dk (k - dk) / k.

Starting from ``y_1 = 0`` (deterministic) or ``y_1 ~ N(0, I)`` (stochastic) and taking
``S`` equal steps to ``k = 0`` gives a direction, normalised to unit length. With ``S = 1``
from ``y_1 = 0`` the result is ``-h_pred(0, 1)``: the one-step regression of the reference
code. With the true ``h`` (an oracle), every path ends exactly at ``y_0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from ...errors import ConfigError


@dataclass
class DiffusionConfig:
    """Training-time diffusion settings."""

    k_min: float = 1e-3          # k ~ U(k_min, 1)
    max_weight: float = 100.0    # lambda1 and lambda2 are clipped here
    one_head: bool = False       # predict h only; eps follows from y_k, h and k

    def __post_init__(self):
        if not 0 < self.k_min < 1:
            raise ConfigError(f"k_min must lie in (0, 1), got {self.k_min}")
        if not self.max_weight > 0:
            raise ConfigError(f"max_weight must be positive, got {self.max_weight}")


def sample_k(n: int, k_min: float, generator: torch.Generator | None = None, device=None,
             dtype: torch.dtype = torch.float32) -> Tensor:
    """Diffusion times ``(n, 1)`` uniform on ``[k_min, 1)``."""
    u = torch.rand(n, 1, generator=generator, device=device, dtype=dtype)
    return k_min + (1.0 - k_min) * u


def diffuse(y0: Tensor, k: Tensor, eps: Tensor) -> Tensor:
    """``y_k = y_0 + k h + sqrt(k) eps`` with ``h = -y_0``; ``k`` broadcasts over the last axis."""
    return y0 - k * y0 + k.sqrt() * eps


def eps_from_h(y_k: Tensor, h: Tensor, k: Tensor) -> Tensor:
    """The noise implied by ``y_k`` and ``h`` (``y_0 = -h``): the one-head variant's second output."""
    return (y_k + h - k * h) / k.sqrt()


def loss_weights(k: Tensor, max_weight: float = 100.0) -> tuple[Tensor, Tensor]:
    """``lambda1 = (k^2-k+1)/k`` and ``lambda2 = (k^2-k+1)/(1-k)^2``, each clipped at ``max_weight``."""
    num = k * k - k + 1.0            # in [3/4, 1]: never zero, so the ratios are finite or +inf
    return (num / k).clamp(max=max_weight), (num / (1.0 - k).square()).clamp(max=max_weight)


def decoupled_loss(h_pred: Tensor, eps_pred: Tensor, h: Tensor, eps: Tensor, k: Tensor,
                   max_weight: float = 100.0) -> tuple[Tensor, dict[str, float]]:
    """``mean(lambda1 SmoothL1(h_pred, h) + lambda2 SmoothL1(eps_pred, eps))`` and its two parts."""
    lam1, lam2 = loss_weights(k, max_weight)
    l_h = F.smooth_l1_loss(h_pred, h, reduction="none").mean(dim=-1, keepdim=True)
    l_eps = F.smooth_l1_loss(eps_pred, eps, reduction="none").mean(dim=-1, keepdim=True)
    loss = (lam1 * l_h + lam2 * l_eps).mean()
    return loss, {"loss_h": float(l_h.mean().detach()), "loss_eps": float(l_eps.mean().detach())}


Denoiser = Callable[[Tensor, Tensor], Tensor]   # (y_k (N, D), k (N, 1)) -> h_pred (N, D)


def sampler_noise(n: int, dim: int = 3, steps: int = 1, generator: torch.Generator | None = None, device=None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """The draws of a stochastic :func:`sample` of ``n`` samples, in its order: ``y_1``, then each step's noise.

    Drawn once for all ``n`` and sliced, they let the samples be computed in blocks of rows
    with the random stream of one call.

    Returns
    -------
    ``(n, steps, dim)``: per sample, ``y_1``, then the noise added after each step but the
    last (drawn step by step, each for all ``n``).
    """
    return torch.stack([torch.randn(n, dim, generator=generator, device=device, dtype=dtype) for _ in range(steps)],
                       dim=1)


def sample(denoise: Denoiser, n: int, dim: int = 3, steps: int = 1, stochastic: bool = False,
           generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32,
           normalise: bool = True, noise: Tensor | None = None) -> Tensor:
    """Run the reverse process from ``k = 1`` to ``0`` in ``steps`` equal steps.

    Parameters
    ----------
    denoise : callable
        ``h_pred = denoise(y_k, k)``; the caller binds the conditioning.
    n, dim : int
        Number of samples and their size (3 for directions).
    steps : int
        ``S``; 1 with ``stochastic=False`` is the one-step regression.
    stochastic : bool
        Start from ``N(0, I)`` and add the posterior noise at each step (probabilistic
        tracking); otherwise start from 0 and take the posterior mean.
    generator : torch.Generator, optional
        The source of every random draw (same generator state, same samples).
    normalise : bool
        Return unit vectors (zero vectors stay zero).
    noise : Tensor, optional
        With ``stochastic``, this sample's rows of :func:`sampler_noise` (nothing is drawn).
    """
    if steps < 1:
        raise ConfigError(f"the sampler needs at least one step, got {steps}")
    if stochastic:
        noise = sampler_noise(n, dim, steps, generator, device, dtype) if noise is None else noise
        y = noise[:, 0]
    else:
        y = torch.zeros(n, dim, device=device, dtype=dtype)
    for i in range(steps):
        k = 1.0 - i / steps
        k_next = 1.0 - (i + 1) / steps if i + 1 < steps else 0.0   # exactly 0 at the end
        step = k - k_next
        h_pred = denoise(y, torch.full((n, 1), k, device=y.device, dtype=y.dtype))
        y = (k_next / k) * y - (step / k) * h_pred
        if stochastic and i + 1 < steps:
            y = y + (step * k_next / k) ** 0.5 * noise[:, i + 1]
    return F.normalize(y, dim=-1) if normalise else y
