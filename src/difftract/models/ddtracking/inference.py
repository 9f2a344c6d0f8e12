"""DDTracking's tracking step as dense matrices: the same function as the network, faster on CPUs.

Tracking asks the network one question per point, for thousands of points at a time, and
every convolution in it runs on a tiny signal: the spatial branches' Conv3d on a 3x3x3
neighbourhood, the denoiser's Conv1d on a direction of length 3. At these sizes oneDNN's
convolutions, GroupNorm and the per-channel FiLM broadcasts over a length-3 axis run far
below the speed of a matrix product on the same cores (the denoiser alone took about half
of the network's time per point).
So :class:`TrackingNetwork` is built once from the weights, and:

- each convolution is the matrix it is on its fixed input size (the convolution of the
  identity), applied with one ``addmm``; zero padding is in the matrix, and the two spatial
  branches share one product;
- the denoiser's activations are laid out position-major (``(N, 3, C)`` flattened), so
  every per-channel scale and shift broadcasts along a contiguous axis;
- GroupNorm's centring is linear, so it is folded into the convolution before it; the
  group variances are one small product; the norm's affine and both FiLMs collapse into
  one per-channel scale and shift per point;
- every FiLM projection is one product per condition for all five blocks, once per point:
  ``G = [c_t, emb(k)]`` splits into its ``c_t`` part (per point) and its ``emb(k)`` part
  (one row per sampler step), so ``S`` sampler steps repeat only the convolutions;
- the GRU runs as its gate equations on ``addmm``, and the sampler uses only the ``h`` head.

The results equal :class:`~.model.DDTracking`'s up to float rounding (tests compare them).

``matmul_dtype=torch.bfloat16`` runs the large products (the spatial convolution and MLPs, the
GRU, the denoiser's convolutions and FiLM projections) on bfloat16 copies of their matrices,
each activation cast as it enters and the product, accumulated in float32 but returned in
bfloat16 (a CPU's bfloat16 product gives no float32 output in torch 2.13), cast back; the
norms, nonlinearities, the GRU's state and the sampler stay in the network's dtype. On CPUs with
bfloat16 units (AMX, AVX512-BF16) these products run about 3-4x faster than in float32, and the
steps move by a fraction of a degree (README, "Learned tracking"). oneDNN makes its bfloat16
kernels for each row count it meets, about 20 ms each, so :attr:`TrackingNetwork.pads_rows`
tells the getter to pad its blocks to a few row counts.
Every weight is copied: a network changed after the getter was made is not seen by it.
Inference only: the tracker runs without gradients.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import ConfigError
from . import diffusion
from .denoiser import Denoiser, FiLMResBlock
from .encoders import TemporalEncoder, time_embedding
from .model import DDTracking


def conv_matrix(conv: nn.Conv1d | nn.Conv3d, size: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``conv`` on inputs of spatial ``size`` as ``(W (c_in * n, c_out * n), b (c_out * n,))``.

    Inputs and outputs are flattened channel-major (``(C, *size)`` in C order), as
    ``x.reshape(N, -1)`` of an ``(N, C, *size)`` tensor; ``conv(x) == x_flat @ W + b``.
    """
    if (conv.bias is None or conv.padding_mode != "zeros" or conv.groups != 1
            or any(s != 1 for s in conv.stride) or any(d != 1 for d in conv.dilation)):
        raise ValueError(f"conv_matrix takes a biased, zero-padded, stride-1 convolution, got {conv}")
    c_in, n = conv.in_channels, math.prod(size)
    eye = torch.eye(c_in * n, dtype=conv.weight.dtype, device=conv.weight.device).reshape(c_in * n, c_in, *size)
    run = F.conv1d if isinstance(conv, nn.Conv1d) else F.conv3d
    W = run(eye, conv.weight, None, padding=conv.padding).reshape(c_in * n, -1)
    return W, conv.bias.repeat_interleave(n)


def _position_major(c: int) -> Tensor:
    """Channel-major indices ``3 c' + l`` in position-major order ``l C + c'``."""
    return torch.arange(3 * c).reshape(c, 3).T.reshape(-1)


def _conv1d(conv: nn.Conv1d, rows: slice | None = None) -> tuple[Tensor, Tensor]:
    """A length-3 Conv1d as a position-major matrix (``rows``: the input channels kept, for a split input)."""
    W, b = conv_matrix(conv, (3,))
    W = W.reshape(conv.in_channels, 3, -1)[rows or slice(None)].transpose(0, 1).reshape(-1, W.shape[1])
    out = _position_major(conv.out_channels)
    return W[:, out], b[out]


class _Block:
    """A :class:`~.denoiser.FiLMResBlock` on position-major ``(N, 3 C)`` activations.

    ``split``: the input's channel blocks (the decoder's U-Net concatenation), each with
    its own slice of the matrices, so no concatenation is made.
    """

    def __init__(self, block: FiLMResBlock, split: list[int], put: Callable[[Tensor], Tensor],
                 mat: Callable[[Tensor], Tensor]):
        C = self.channels = block.conv1.out_channels
        G = block.norm1.num_groups
        edges = torch.cumsum(torch.tensor([0] + split), 0).tolist()
        parts = [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]
        # GroupNorm's mean removal as a matrix: P = I - M E, M averaging each group, E spreading back
        group = (torch.arange(3 * C) % C) // (C // G)
        E = F.one_hot(group, G).to(torch.float64).T                           # (G, 3C)
        mean = (E / E.sum(dim=1, keepdim=True)).T                              # (3C, G)
        P = torch.eye(3 * C, dtype=torch.float64) - mean @ E
        self.mean = put(mean)
        # a split input is x_1 @ W_1 + x_2 @ W_2 (no concatenation): the bias is added once, with part 0
        self.conv1 = [(mat(W @ P), put(b @ P) if i == 0 else None)
                      for i, (W, b) in enumerate(_conv1d(block.conv1, p) for p in parts)]
        W, b = _conv1d(block.conv2)
        self.conv2 = mat(W @ P), put(b @ P)
        self.skip = None if isinstance(block.skip, nn.Identity) else [
            (mat(W), put(b) if i == 0 else None) for i, (W, b) in enumerate(_conv1d(block.skip, p) for p in parts)]
        self.groups, self.eps1, self.eps2 = G, block.norm1.eps, block.norm2.eps
        self.gamma1, self.beta1 = put(block.norm1.weight), put(block.norm1.bias)
        self.gamma2, self.beta2 = put(block.norm2.weight), put(block.norm2.bias)

    def _scale(self, d: Tensor, eps: float) -> Tensor:
        """``1 / sqrt(var + eps)`` per point and channel ``(N, C)`` of centred ``d (N, 3C)``."""
        r = torch.rsqrt((d * d) @ self.mean + eps)                             # (N, G)
        return r.repeat_interleave(self.channels // self.groups, dim=1)

    def __call__(self, xs: list[Tensor], g: Tensor, l: Tensor | None) -> Tensor:
        """``xs``: the input's parts; ``g``, ``l``: this block's FiLM projections ``(N, 2C)`` (scale, shift)."""
        N, C = len(xs[0]), self.channels
        d = _addmm_parts(xs, self.conv1)                                       # conv1, centred per group
        # norm1's affine, then FiLM(G), then FiLM(L): one scale and one shift per point and channel
        scale = self._scale(d, self.eps1) * self.gamma1 * (1.0 + g[:, :C])
        shift = self.beta1 * (1.0 + g[:, :C]) + g[:, C:]
        if l is not None:
            scale, shift = scale * (1.0 + l[:, :C]), shift * (1.0 + l[:, :C]) + l[:, C:]
        h = F.silu(torch.addcmul(shift[:, None], d.view(N, 3, C), scale[:, None])).view(N, 3 * C)
        d2 = _mm(h, self.conv2[0], self.conv2[1])
        skip = xs[0] if self.skip is None else _addmm_parts(xs, self.skip)
        out = torch.addcmul(skip.view(N, 3, C) + self.beta2, d2.view(N, 3, C),
                            (self._scale(d2, self.eps2) * self.gamma2)[:, None])
        return F.silu(out).view(N, 3 * C)


def _mm(x: Tensor, W: Tensor, b: Tensor | None = None) -> Tensor:
    """``x @ W (+ b)``; a ``W`` in another dtype (bfloat16) takes ``x`` cast to it, and gives ``x``'s dtype back."""
    if W.dtype == x.dtype:
        return x @ W if b is None else torch.addmm(b, x, W)
    y = (x.to(W.dtype) @ W).to(x.dtype)
    return y if b is None else y.add_(b)


def _addmm_parts(xs: list[Tensor], mats: list[tuple[Tensor, Tensor | None]]) -> Tensor:
    """``sum_i xs[i] @ W_i`` plus the bias(es)."""
    out = None
    for x, (W, b) in zip(xs, mats):
        y = _mm(x, W, b)
        out = y if out is None else out.add_(y)
    return out


class _DenseDenoiser:
    """:class:`~.denoiser.Denoiser`'s ``h`` head with every FiLM projection computed once per point."""

    def __init__(self, denoiser: Denoiser, context_dim: int, time_dim: int, put: Callable[[Tensor], Tensor],
                 mat: Callable[[Tensor], Tensor]):
        blocks = [denoiser.enc1, denoiser.enc2, denoiser.mid, denoiser.dec2, denoiser.dec1]
        w = denoiser.enc1.conv1.out_channels
        splits = [[w], [w], [2 * w], [2 * w, 2 * w], [w, w]]                 # dec2: [mid, enc2]; dec1: [dec2, enc1]
        self.blocks = [_Block(b, s, put, mat) for b, s in zip(blocks, splits)]
        self.split = [2 * b.channels for b in self.blocks]
        film_g = torch.cat([b.film_g.proj.weight for b in blocks]).T            # (context + time, sum 2C)
        self.g_context, self.g_time = mat(film_g[:context_dim]), put(film_g[context_dim:])
        self.g_bias = put(torch.cat([b.film_g.proj.bias for b in blocks]))
        self.local = blocks[0].film_l is not None
        if self.local:
            self.l_weight = mat(torch.cat([b.film_l.proj.weight for b in blocks]).T)
            self.l_bias = put(torch.cat([b.film_l.proj.bias for b in blocks]))
        self.time_dim = time_dim
        self.lift, self.head = (tuple(put(t) for t in _conv1d(c)) for c in (denoiser.lift, denoiser.head_h))

    def conditions(self, c: Tensor, v: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The per-point parts of the FiLM projections: ``c_t``'s (no bias) and ``v_t``'s."""
        return _mm(c, self.g_context), (_mm(v, self.l_weight, self.l_bias) if self.local else None)

    def h(self, y: Tensor, k: Tensor, g_point: Tensor, l_all: Tensor | None) -> Tensor:
        """``h_pred (N, 3)`` at ``y (N, 3)`` and diffusion times ``k (N, 1)``, all equal (the sampler's)."""
        g_time = torch.addmm(self.g_bias, time_embedding(k[:1], self.time_dim), self.g_time)   # (1, sum 2C)
        gs = (g_point + g_time).split(self.split, dim=1)
        ls = l_all.split(self.split, dim=1) if l_all is not None else [None] * len(self.blocks)
        x = torch.addmm(self.lift[1], y, self.lift[0])
        enc1, enc2, mid, dec2, dec1 = self.blocks
        e1 = enc1([x], gs[0], ls[0])
        e2 = enc2([e1], gs[1], ls[1])
        m = mid([e2], gs[2], ls[2])
        d2 = dec2([m, e2], gs[3], ls[3])
        d1 = dec1([d2, e1], gs[4], ls[4])
        return torch.addmm(self.head[1], d1, self.head[0])


class _DenseGRU:
    """:class:`~.encoders.TemporalEncoder`'s step as the GRU's gate equations (PyTorch's gate order r, z, n)."""

    def __init__(self, temporal: TemporalEncoder, put: Callable[[Tensor], Tensor], mat: Callable[[Tensor], Tensor]):
        gru = temporal.gru
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        layers = [[getattr(gru, f"{name}_l{i}") for name in names] for i in range(gru.num_layers)]
        self.layers = [(mat(w_ih.T), mat(w_hh.T), put(b_ih), put(b_hh)) for w_ih, w_hh, b_ih, b_hh in layers]

    def __call__(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, input)``, ``state (N, layers, hidden)`` -> the last layer's output and the new state."""
        new = []
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(self.layers):
            h = state[:, i]
            gi, gh = _mm(x, w_ih, b_ih).chunk(3, dim=1), _mm(h, w_hh, b_hh).chunk(3, dim=1)
            r, z = torch.sigmoid(gi[0] + gh[0]), torch.sigmoid(gi[1] + gh[1])
            n = torch.tanh(torch.addcmul(gi[2], r, gh[2]))
            x = torch.lerp(n, h, z)                                            # (1 - z) n + z h
            new.append(x)
        return x, torch.stack(new, dim=1)


class _DenseMlp:
    """A spatial branch's Linear, GELU, Linear, each Linear as ``F.linear`` runs it (``addmm`` on the weight's
    transpose, so float32 results are bit for bit the module's)."""

    def __init__(self, layers: nn.Sequential, put: Callable[[Tensor], Tensor], mat: Callable[[Tensor], Tensor]):
        first, act, second = layers
        self.first, self.second = [(mat(layer.weight).T, put(layer.bias)) for layer in (first, second)]
        self.act = copy.deepcopy(act)

    def __call__(self, x: Tensor) -> Tensor:
        return _mm(self.act(_mm(x, *self.first)), *self.second)


class TrackingNetwork:
    """A frozen, dense copy of a :class:`~.model.DDTracking` for tracking (see the module docstring).

    ``spatial`` then ``recur`` is :meth:`.model.DDTracking.step` (on channels-last
    neighbourhoods, :func:`.features.samples`; the getter logs ``z_t`` between them, and the
    backward half's replay asks ``spatial`` for ``z_t`` alone), and ``direction`` is the
    network's.
    The matrices are made in float64 on the CPU from a copy of the weights (a GPU's TF32
    convolutions would round them), then moved to ``device`` and ``dtype`` (default: the
    network's); those of the large products to ``matmul_dtype`` (default: ``dtype``; the
    module docstring says what bfloat16 does).
    """

    @torch.no_grad()
    def __init__(self, model: DDTracking, device=None, dtype: torch.dtype | None = None,
                 matmul_dtype: torch.dtype | None = None):
        first = next(model.parameters())
        self.device, self.dtype = torch.device(device or first.device), dtype or first.dtype
        if matmul_dtype not in (None, torch.float32, torch.float64, torch.bfloat16):
            raise ConfigError(f"the products' dtype must be float32, float64 or bfloat16, got {matmul_dtype}")
        self.matmul_dtype = matmul_dtype or self.dtype
        self.source = m = copy.deepcopy(model).to("cpu", torch.float64).eval()
        c = self.config = m.config
        put = lambda t: t.detach().to(self.device, self.dtype).contiguous()   # noqa: E731
        mat = lambda t: t.detach().to(self.device, self.matmul_dtype).contiguous()   # noqa: E731
        branches = [m.spatial.z] + ([m.spatial.v] if c.local else [])
        mats = [conv_matrix(b.conv, (3, 3, 3)) for b in branches]
        conv = torch.cat([W for W, _ in mats], dim=1)                           # rows (m, x, y, z)
        conv = conv.reshape(c.n_coeffs, 27, -1).transpose(0, 1).reshape(27 * c.n_coeffs, -1)   # rows (x, y, z, m)
        self.conv = mat(conv), put(torch.cat([b for _, b in mats]))
        self.mlps = [_DenseMlp(b.mlp[2:], put, mat) for b in branches]          # Linear, GELU, Linear
        self.width = c.conv_channels * 27
        self.gru = _DenseGRU(m.temporal, put, mat)
        self.head = None if c.generative else copy.deepcopy(m.head).to(self.device, self.dtype)
        self.denoiser = _DenseDenoiser(m.denoiser, c.gru_hidden, c.time_dim, put, mat) if c.generative else None

    @property
    def pads_rows(self) -> bool:
        """Whether calls should come in a few row counts: oneDNN makes its bfloat16 CPU kernels per shape."""
        return self.device.type == "cpu" and self.matmul_dtype != self.dtype

    def to(self, device, dtype: torch.dtype) -> TrackingNetwork:
        """The same weights on ``device`` in ``dtype`` (rebuilt from the float64 copy; itself if already there),
        the products in bfloat16 still if they were."""
        if torch.device(device) == self.device and dtype == self.dtype:
            return self
        own = None if self.matmul_dtype == self.dtype else self.matmul_dtype
        return TrackingNetwork(self.source, device, dtype, own)

    def initial(self, n: int) -> Tensor:
        """A fresh GRU state ``(n, layers, hidden)``."""
        return torch.zeros(n, self.config.gru_layers, self.config.gru_hidden, device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def spatial(self, samples: Tensor, local: bool = True) -> tuple[Tensor, Tensor | None]:
        """``z_t`` and (with ``local`` and a local branch) ``v_t`` of :func:`.features.samples` ``(N, 3, 3, 3, m)``."""
        x = samples.reshape(len(samples), self.conv[0].shape[0])
        n = self.width * (2 if local and len(self.mlps) == 2 else 1)
        a = F.gelu(_mm(x, self.conv[0][:, :n], self.conv[1][:n]))
        z = self.mlps[0](a[:, : self.width])
        return z, (self.mlps[1](a[:, self.width:]) if n > self.width else None)

    @torch.no_grad()
    def recur(self, z: Tensor, prev: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """The GRU's step on ``[z_t, d_{t-1}]``: ``c (N, hidden)`` and the new state."""
        return self.gru(torch.cat([z, prev], dim=-1), state)

    @torch.no_grad()
    def direction(self, c: Tensor, v: Tensor | None, steps: int = 1, stochastic: bool = False,
                  generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """As :meth:`.model.DDTracking.direction`: unit directions ``(N, 3)``; ``noise``, the rows'
        :func:`.diffusion.sampler_noise` drawn beforehand (stochastic)."""
        if self.head is not None:
            return F.normalize(self.head(torch.cat([c, v], dim=-1) if v is not None else c), dim=-1)
        g_point, l_all = self.denoiser.conditions(c, v)
        return diffusion.sample(lambda y, k: self.denoiser.h(y, k, g_point, l_all), len(c), 3, steps=steps,
                                stochastic=stochastic, generator=generator, device=c.device, dtype=c.dtype,
                                noise=noise)
