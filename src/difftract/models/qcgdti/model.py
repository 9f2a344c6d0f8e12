"""QCG-DTI: a tensor from one b0 and six DWIs of any q-space scheme.

The six (b0, DWI_i) pairs go through one shared multiscale encoder, stacked along the batch
axis. At every level a QCF module modulates each pair's features by its q-space coordinate
``(gx, gy, gz, b / 1000)``; the six modulated feature maps are then concatenated along
channels and fused by a convolution. A U-Net decoder (ResizeConv upsampling, skip
connections to the fused features, MRD blocks) ends in a convolution to the six tensor
elements in DIPY's order, in um^2/ms (mm^2/s times 1000).

The coordinate enters the network through an antipodally symmetric embedding,
``(gx^2, gy^2, gz^2, sqrt2 gx gy, sqrt2 gx gz, sqrt2 gy gz, b / 1000)``: ``g`` and ``-g`` are
the same measurement, and the tensor is linear in ``g g^T`` (``log S_i/S0 = -b g^T D g``), so
the FiLM scale can be linear in it (with the raw ``(g, b)`` the network must first learn the
sign invariance and the products).

Our change: the last convolution also sees the exact least-squares tensor of the six DWIs
(``lsq_input=True``, six extra channels). The paper's network maps the images to the tensor
with nothing else (``lsq_input=False``, kept as an option). On a CPU budget (300 steps of two
32^3 patches) that network learned the scale of the tensors but not their orientation (mean
principal-direction error 46 degrees against 11 for WLS); with the least-squares tensor as an
input, orientation is a linear function of what the last layer sees, and the network learns to
denoise it from the neighbourhood, the b0 and the q-space coordinates. Adding the
least-squares tensor to the output instead (a residual) trained far slower. All four variants
use it, so the ablations measure what each part adds.

Our second change (``anisotropy_gain=True``, issue 20): a small branch beside the head
predicts a per-voxel gain ``exp(g)`` on the anisotropic part of the head's tensor, ``D = MD I
+ exp(g) (D_head - MD I)``. The head is linear in the least-squares tensor it sees, so it
can denoise that tensor but cannot stretch its anisotropy by a voxel-dependent amount; yet
that is what a six-DWI tensor needs (its FA is compressed by the Rician floor of the DWIs
along the fibre at high b and low SNR, by amounts that depend on b, SNR and tissue; against
a multi-shell reference, also by the kurtosis of one shell). The branch's last layer starts
at zero, so a network trained without it continues unchanged (``--init``). The shipped
branch is trained against the tensor of the input's own shell (``--target shell``,
:mod:`.data`): a multi-shell reference differs from it by an amount no one-shell input shows
and that differs between simulators, so a gain learned against it over-corrects a foreign
signal.

What the branch reads (``gain_input``): ``all``, the head's own input (decoder features and
the least-squares tensor); ``invariant``, the first features, the head's FA and MD and b;
``calibration``, no features at all: a per-voxel function of the head's FA and MD, the
six-DWI least-squares tensor's FA and MD, b, the patch's b0 SNR (:func:`patch_snr`) and the
voxel's b0. The head's FA is denoised but blurred: at a bundle's edge it is lower than in
its core for the same true FA (``benchmarks/measure_qcgdti_scatter.py``), which a gain
from the head's FA alone cannot tell from low anisotropy; the least-squares FA is noisy but
not blurred. Read from features, the gain scattered from voxel to voxel.

With ``md_gain=True`` a second branch of the same kind (the calibration inputs, a per-voxel
MLP) scales the whole tensor by ``exp(m)``: MD times ``exp(m)``, FA and directions unchanged.
The head's MD was trained against the three-shell tensor, whose MD is lower than a single
shell's wherever the signal is not Gaussian (kurtosis); the branch, trained alone against
the shell target, corrects it without retraining the network. Neither branch can see the
noise model: a multi-coil noise floor and tissue give the same seven numbers, so the shipped
branches are trained on Rician noise only, and the weights' domain says so (the weights
README). A separate branch, not a second output of the anisotropy gain's, so that training
it from weights with a trained anisotropy gain leaves their FA exactly as it was (a shared
hidden layer moved it).

Variants (the paper's ablations):

- ``full``: the above;
- ``no_qcf``: no q-space modulation (only the least-squares input carries the directions);
- ``concat``: no shared encoder; b0, the six DWIs and their coordinates (as constant maps)
  are stacked on channels and go through one encoder;
- ``resnet``: every MRD block replaced by a ResNet block of the same width and depth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...reconst.tensor import from_lower_triangular
from .blocks import QCF, MRDBlock, ResBlock, ResizeConv, conv

VARIANTS = ("full", "no_qcf", "concat", "resnet")
GAIN_INPUTS = ("all", "invariant", "calibration")
CALIBRATION_INPUTS = 7   # head FA and MD, six-DWI FA and MD, b / 1000, log patch SNR / 20, log voxel b0
MIN_NOISE_VOXELS = 64    # tissue voxels a patch needs for its own noise estimate
DEFAULT_SNR = 20.0       # assumed where a patch has fewer
N_DWI = 6
Q_DIM = 4         # input coordinate (gx, gy, gz, b / 1000)
Q_EMBED = 7       # its symmetric embedding, see q_embedding
GAIN_HIDDEN = 16  # channels of the anisotropy-gain branch
MAX_LOG_GAIN = 3.0  # the gain stays within exp(+-3)
MAX_LOG_MD_GAIN = 1.0   # the MD scale within exp(+-1)
PSD_MARGIN = 0.95   # a gain above 1 leaves the smallest eigenvalue at least 5% of MD
DIAGONAL = (0, 2, 5)    # Dxx, Dyy, Dzz in DIPY's order
OFF_DIAGONAL = (1, 3, 4)  # Dxy, Dxz, Dyz
TENSOR_SCALE = 1e3   # network outputs um^2/ms: mm^2/s * 1e3
# the training losses (data.QCGTask); here, where the CLI can read them cheaply
LOSSES = ("mse", "relative", "anisotropic", "decomposed", "balanced")
TARGETS = ("all-shells", "shell")   # the reference tensors: the fit on every volume, or on the input's shell


@dataclass
class QCGConfig:
    """Architecture of a QCG-DTI network (defaults sized for a CPU)."""

    variant: str = "full"
    widths: tuple[int, ...] = (8, 16, 32)   # channels per level; len(widths) - 1 downsamplings
    qcf_hidden: int = 32
    lsq_input: bool = True                  # the last layer also sees the six-DWI least-squares tensor
    anisotropy_gain: bool = False           # a per-voxel gain on the head's anisotropic part (see above)
    gain_input: str = "all"                 # what the gain sees: "all" (the head's input), "invariant", "calibration"
    md_gain: bool = False                   # a second branch scales the whole tensor (MD) per voxel

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if self.gain_input not in GAIN_INPUTS:
            raise ConfigError(f"unknown gain input {self.gain_input!r}; expected one of {', '.join(GAIN_INPUTS)}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown QCG-DTI variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.md_gain and not self.anisotropy_gain:
            raise ConfigError("the MD gain reads the calibration inputs beside the anisotropy gain: it needs "
                              "anisotropy_gain")
        if not self.widths or min(self.widths) < 1:
            raise ConfigError(f"widths must be positive channel counts, got {self.widths}")

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (len(self.widths) - 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        if not self.md_gain:   # as written before the MD gain existed
            del d["md_gain"]
        if not self.anisotropy_gain:   # as written before the branch existed: older checkpoints still resume
            del d["anisotropy_gain"], d["gain_input"]
        elif self.gain_input == "all":   # as the shipped file was written
            del d["gain_input"]
        return d


def q_embedding(q: Tensor) -> Tensor:
    """(..., 4) coordinates ``(g, b)`` -> (..., 7) ``(g g^T unique elements, b)``, invariant to ``g -> -g``."""
    g, b = q[..., :3], q[..., 3:]
    x, y, z = g.unbind(-1)
    r2 = 2.0 ** 0.5
    return torch.cat([torch.stack([x * x, y * y, z * z, r2 * x * y, r2 * x * z, r2 * y * z], dim=-1), b], dim=-1)


def six_direction_fit(pairs: Tensor, q: Tensor, eps: float = 1e-3, max_adc: float = 3.0) -> Tensor:
    """The exact least-squares tensor of one b0 and six DWIs, (B, 6, X, Y, Z) in um^2/ms.

    ``log(S_i / S0) = -b_i g_i^T D g_i`` for six directions is a square linear system, so
    OLS and WLS coincide. Each apparent diffusion coefficient ``-log(S_i/S0) / b_i`` is
    clipped to [0, ``max_adc``] (free water at body temperature is 3 um^2/ms; values outside
    are noise), and voxels without signal give 0.
    """
    s0, s = pairs[:, :, 0], pairs[:, :, 1]
    b = q[..., 3]
    ratio = torch.where(s0 > eps, (s / s0.clamp_min(eps)).clamp_min(eps), torch.ones_like(s))
    adc = (-torch.log(ratio) / b[..., None, None, None]).clamp(0.0, max_adc)
    x, y, z = q[..., :3].unbind(-1)
    design = q[..., 3:] * torch.stack([x * x, 2 * x * y, y * y, 2 * x * z, 2 * y * z, z * z], dim=-1)
    return torch.einsum("bkj,bj...->bk...", torch.linalg.inv(design), adc * b[..., None, None, None])


class QCGDTI(nn.Module):
    """The network. ``forward(pairs, q)`` with pairs (B, 6, 2, X, Y, Z) and q (B, 6, 4)."""

    def __init__(self, config: QCGConfig | None = None):
        super().__init__()
        self.config = config = config or QCGConfig()
        w = config.widths
        block = ResBlock if config.variant == "resnet" else MRDBlock
        shared = config.variant != "concat"
        c_in = 2 if shared else 1 + N_DWI + N_DWI * Q_EMBED
        self.stem = conv(c_in, w[0], 3)
        self.down = nn.ModuleList(nn.Conv3d(a, b, 4, stride=2, padding=1) for a, b in zip(w[:-1], w[1:]))
        self.enc = nn.ModuleList(block(c) for c in w)
        if shared:
            self.qcf = nn.ModuleList(QCF(c, Q_EMBED, config.qcf_hidden) for c in w) if config.variant != "no_qcf" else None
            self.fuse = nn.ModuleList(conv(N_DWI * c, c, 3) for c in w)
        self.up = nn.ModuleList(ResizeConv(b, a) for a, b in zip(w[:-1], w[1:]))
        self.merge = nn.ModuleList(conv(2 * c, c, 1) for c in w[:-1])
        self.dec = nn.ModuleList(block(c) for c in w)
        c_head = w[0] + (N_DWI if config.lsq_input else 0)
        self.head = conv(c_head, N_DWI, 3)
        if config.anisotropy_gain:
            if config.gain_input == "calibration":   # a per-voxel function of a few numbers: no spatial scatter
                self.gain = calibration_mlp()
            else:
                c_gain = c_head if config.gain_input == "all" else w[0] + 3   # features, head FA and MD, b
                self.gain = nn.Sequential(conv(c_gain, GAIN_HIDDEN, 3), nn.GELU(), conv(GAIN_HIDDEN, 1, 1))
                nn.init.zeros_(self.gain[-1].weight)
                nn.init.zeros_(self.gain[-1].bias)
        if config.md_gain:
            self.md_gain = calibration_mlp()

    def forward(self, pairs: Tensor, q: Tensor) -> Tensor:
        """Tensor elements (B, 6, X, Y, Z) in um^2/ms from standardised pairs and coordinates."""
        B, n, two, *size = pairs.shape
        if n != N_DWI or two != 2 or q.shape != (B, N_DWI, Q_DIM):
            raise ConfigError(f"QCG-DTI takes pairs (B, 6, 2, X, Y, Z) and q (B, 6, 4), "
                              f"got {tuple(pairs.shape)} and {tuple(q.shape)}")
        if any(s % self.config.multiple for s in size):
            raise ConfigError(f"spatial size {size} must be a multiple of {self.config.multiple}")
        emb = q_embedding(q)
        skips = self._encode_concat(pairs, emb) if self.config.variant == "concat" else self._encode_shared(pairs, emb)
        x = self.dec[-1](skips[-1])
        for level in reversed(range(len(self.up))):
            x = self.up[level](x)
            x = self.dec[level](self.merge[level](torch.cat([x, skips[level]], dim=1)))
        calibrated = self.config.anisotropy_gain and (self.config.gain_input == "calibration" or self.config.md_gain)
        if self.config.lsq_input or calibrated:
            with torch.autocast(pairs.device.type, enabled=False):   # logs and a 6x6 inverse: full precision
                lsq = six_direction_fit(pairs.float(), q.float())
        if self.config.lsq_input:
            x = torch.cat([x, lsq.to(x.dtype)], dim=1)
        if not self.config.anisotropy_gain:
            return self.head(x)
        head = self.head(x)
        if calibrated:
            with torch.autocast(pairs.device.type, enabled=False):   # FAs, MDs and noise medians: full precision
                inputs = calibration_inputs(head.float(), lsq, pairs.float(), q.float()).to(x.dtype)
        if self.config.gain_input == "all":
            log_gain = self.gain(x)
        elif self.config.gain_input == "calibration":
            log_gain = self.gain(inputs)
        else:   # what the correction depends on (b, noise, tissue), not the orientation of the noisy LSQ tensor
            md, fa, _ = tensor_parts(head.float())
            b = mean_b(q).view(-1, 1, 1, 1, 1).expand_as(md[:, None])
            invariants = torch.stack([fa, md], dim=1).to(x.dtype)
            log_gain = self.gain(torch.cat([x[:, : self.config.widths[0]], invariants, b.to(x.dtype)], dim=1))
        with torch.autocast(pairs.device.type, enabled=False):   # a gain of up to e^3 on half-precision rounding
            out = scale_anisotropy(head.float(), torch.exp(log_gain.float().clamp(-MAX_LOG_GAIN, MAX_LOG_GAIN)))
            if self.config.md_gain:   # a positive scale: FA, directions and positive definiteness kept
                out = out * torch.exp(self.md_gain(inputs).float().clamp(-MAX_LOG_MD_GAIN, MAX_LOG_MD_GAIN))
            return out

    def _encode_shared(self, pairs: Tensor, q: Tensor) -> list[Tensor]:
        B = pairs.shape[0]
        x = self.stem(pairs.flatten(0, 1))               # (B*6, w0, ...)
        q = q.flatten(0, 1)
        fused = []
        for level, enc in enumerate(self.enc):
            if level:
                x = self.down[level - 1](x)
            x = enc(x)
            if self.qcf is not None:
                x = self.qcf[level](x, q)
            fused.append(self.fuse[level](x.reshape(B, -1, *x.shape[2:])))
        return fused

    def _encode_concat(self, pairs: Tensor, q: Tensor) -> list[Tensor]:
        B, _, _, *size = pairs.shape
        b0 = pairs[:, :, 0].mean(dim=1, keepdim=True)    # the six copies of the one b0
        q_maps = q.reshape(B, -1, 1, 1, 1).expand(-1, -1, *size)
        x = self.stem(torch.cat([b0, pairs[:, :, 1], q_maps], dim=1))
        skips = []
        for level, enc in enumerate(self.enc):
            if level:
                x = self.down[level - 1](x)
            x = enc(x)
            skips.append(x)
        return skips


def patch_snr(b0: Tensor, threshold: float = 0.3) -> Tensor:
    """The b0 SNR of each patch (B,), from b0 patches (B, X, Y, Z) in units of the brain's mean b0.

    Along each axis, a voxel's second difference ``x_i - (x_{i-1} + x_{i+1}) / 2`` has
    standard deviation ``sigma sqrt(3/2)`` for independent noise of standard deviation sigma.
    Its median absolute value over the voxels with signal (b0 above ``threshold``) estimates
    sigma per axis; the smallest of the three is kept, since a tissue edge inflates the
    differences across it and not those along it. The image unit is the brain's mean b0, so
    ``1 / sigma`` is the SNR. A patch with fewer than ``MIN_NOISE_VOXELS`` such voxels gets
    ``DEFAULT_SNR``. Spatially correlated noise (interpolated or partial-Fourier scans) reads
    as a higher SNR than it is, and a patch mostly outside the brain, whose tissue voxels lie
    beside the background on every axis, as a lower one. The unit is the brain's mean b0,
    not a simulator's fibre signal: a feature the network learns to read, measured alike in
    training and in use, more than a calibrated SNR.
    """
    inner = [slice(None), slice(1, -1), slice(1, -1), slice(1, -1)]
    centre = b0[tuple(inner)]
    keep = centre > threshold
    sigmas = []
    for axis in (1, 2, 3):
        before, after = list(inner), list(inner)
        before[axis], after[axis] = slice(None, -2), slice(2, None)
        residual = (centre - (b0[tuple(before)] + b0[tuple(after)]) / 2).abs()
        residual = residual.masked_fill(~keep, float("nan")).flatten(1)
        sigmas.append(residual.nanmedian(dim=1).values / (0.6745 * 1.5 ** 0.5))   # MAD of a normal: 0.6745 sigma
    sigma = torch.stack(sigmas).amin(dim=0)
    enough = keep.flatten(1).sum(1) >= MIN_NOISE_VOXELS
    return torch.where(enough & (sigma > 0), 1.0 / sigma.clamp_min(1e-6), torch.full_like(sigma, DEFAULT_SNR))


def calibration_mlp() -> nn.Sequential:
    """A per-voxel MLP (1x1x1 convolutions) of the :func:`calibration_inputs` to one log gain, starting at 0."""
    mlp = nn.Sequential(conv(CALIBRATION_INPUTS, GAIN_HIDDEN, 1), nn.GELU(),
                        conv(GAIN_HIDDEN, GAIN_HIDDEN, 1), nn.GELU(), conv(GAIN_HIDDEN, 1, 1))
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


def mean_b(q: Tensor) -> Tensor:
    """The mean b / 1000 (B,) of each input's six coordinates (B, 6, 4)."""
    return q[:, :, 3].mean(dim=1)


def calibration_inputs(head: Tensor, lsq: Tensor, pairs: Tensor, q: Tensor) -> Tensor:
    """What a calibration gain sees (B, 7, X, Y, Z), from the head's and the least-squares tensors.

    The channels: the FA and MD (um^2/ms) of ``head`` and of ``lsq`` (the six DWIs'
    :func:`six_direction_fit`), b / 1000, ``log(SNR / 20)`` of the patch's b0 (:func:`patch_snr`;
    one value per patch, so overlapping patches of a volume read it separately) and the
    voxel's log b0 (brain mean 0).

    The six-DWI tensor's FA is biased by amounts that depend on b, the noise and the tissue
    (the Rician floor along the fibre, one shell's kurtosis), not on where the voxel is: a
    gain from these numbers corrects the bias without the voxel-to-voxel scatter of a gain
    read from the decoder's features.
    """
    md, fa, _ = tensor_parts(head)
    md_lsq, fa_lsq, _ = tensor_parts(lsq)
    b0 = pairs[:, 0, 0]
    snr = patch_snr(b0).view(-1, 1, 1, 1).expand_as(md)
    b = mean_b(q).view(-1, 1, 1, 1).expand_as(md)
    return torch.stack([fa, md, fa_lsq, md_lsq, b, torch.log(snr / DEFAULT_SNR), torch.log(b0.clamp_min(0.05))],
                       dim=1)


def deviatoric(lt: Tensor) -> tuple[Tensor, Tensor]:
    """MD (B, 1, ...) and the deviatoric part ``D - MD I`` (B, 6, ...) of tensors (B, 6, ...) in DIPY order."""
    md = lt[:, list(DIAGONAL)].mean(dim=1, keepdim=True)
    identity = torch.zeros(lt.shape[1], dtype=lt.dtype, device=lt.device)
    identity[list(DIAGONAL)] = 1.0
    return md, lt - md * identity.view((1, -1) + (1,) * (lt.dim() - 2))


def frobenius2(lt: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm (B, X, Y, Z) of symmetric matrices given as (B, 6, X, Y, Z) elements."""
    return lt[:, DIAGONAL].square().sum(1) + 2.0 * lt[:, OFF_DIAGONAL].square().sum(1)


def tensor_parts(lt: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MD, FA and the unit deviatoric part of tensors (B, 6, X, Y, Z), without an eigendecomposition.

    ``FA = sqrt(3/2) |D - MD I| / |D|`` in the Frobenius norm equals the eigenvalue formula
    for any symmetric matrix, and its gradient stays finite where eigenvalues meet (that of
    ``eigh`` does not). The unit deviatoric part ``(D - MD I) / |D - MD I|`` carries the
    orientation and the shape type (linear or planar) but not the size of the anisotropy;
    ``eps`` (um^4/ms^2) keeps it finite for isotropic tensors.
    """
    md, dev = deviatoric(lt)
    dev2 = frobenius2(dev)
    fa = torch.sqrt(1.5 * dev2 / (frobenius2(lt) + eps) + 1e-12)
    return md[:, 0], fa, dev / torch.sqrt(dev2 + eps)[:, None]


def scale_anisotropy(lt: Tensor, gain: Tensor) -> Tensor:
    """``MD I + g (D - MD I)`` for tensors (B, 6, ...) in DIPY order and gains (B, 1, ...).

    A gain above 1 is capped before an eigenvalue turns negative (``g`` at most
    ``PSD_MARGIN * MD / -mu_min``, ``mu_min`` the smallest eigenvalue of ``D - MD I``): a fit's
    FA and MD clip eigenvalues at 0, so a stretch past that point would not show as the FA it
    was trained for, and would raise MD. Gains up to 1 pass unchanged (at 1 the head's own
    tensor). Where the cap binds the gain gets no gradient (a bound, not a target). The
    eigenvectors and the trace are the head's: MD and directions change only where the fit
    clips a negative eigenvalue of the head's own tensor.
    """
    md, dev = deviatoric(lt)
    with torch.no_grad():   # the cap is a bound, not a path for gradients
        lowest = torch.linalg.eigvalsh(from_lower_triangular(dev.movedim(1, -1).float()))[..., 0].to(lt.dtype)
        cap = (PSD_MARGIN * md[:, 0] / (-lowest).clamp_min(1e-6)).clamp_min(1.0)[:, None]
    return lt - dev + torch.minimum(gain, cap) * dev


BRANCHES = ("gain", "md_gain")   # the modules beside the network, each starting at gain 1
BRANCH_NAMES = {"gain": "anisotropy-gain", "md_gain": "MD-gain"}


def branches(config: QCGConfig) -> list[str]:
    """The gain branches (``BRANCHES``) a network of ``config`` has."""
    return [name for name, on in zip(BRANCHES, (config.anisotropy_gain, config.md_gain)) if on]


def load_without_gain(model: QCGDTI, state_dict: dict) -> list[str]:
    """Load the weights of the same network without some of its gain branches, which stay at 1.

    Returns the names of the branches (``BRANCHES``) the weights lacked.
    """
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:   # shapes differ: another architecture
        raise ConfigError(f"these weights do not fit this network: {str(e).splitlines()[1].strip()}") from None
    if unexpected or any(k.split(".")[0] not in BRANCHES for k in missing):
        raise ConfigError(f"these weights do not fit this network: missing {missing}, unexpected {unexpected}")
    return [name for name in BRANCHES if any(k.startswith(name + ".") for k in missing)]


def build_model(config: QCGConfig | dict | None = None) -> QCGDTI:
    """A model from a config or its dict (as stored in a weights file)."""
    if isinstance(config, dict):
        config = QCGConfig(**config)
    return QCGDTI(config)
