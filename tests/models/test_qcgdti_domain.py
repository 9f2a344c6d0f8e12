"""QCG-DTI's training domain: described in the weights, checked against a scan, warned about."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.qcgdti.data import QCGTask
from difftract.reconst import tensor as T
from difftract.training.domain import check_domain, estimate_snr, stream_domain
from difftract.models.qcgdti.model import QCGConfig, QCGDTI
from difftract.models.qcgdti.predict import QCGTensorModel
from difftract.models.qcgdti.schemes import fixed_six
from difftract.phantom import PhantomConfig, simulate
from difftract.phantom.acquisition import AcquisitionRanges
from difftract.training.recipe import phantom_recipe

DOMAIN = {"bvals": [500.0, 1500.0], "snr": [8.0, 50.0], "voxel_size_mm": [2.0, 2.5]}


def test_a_randomised_stream_domain_is_its_ranges():
    template = phantom_recipe("random", {"randomize": True, "acquisition_ranges": {"bvals": [500, 3000],
                                                                                  "snr": [8, 50]}})
    d = stream_domain(template)
    assert d["bvals"] == [500.0, 3000.0] and d["snr"] == [8.0, 50.0]
    assert d["voxel_size_mm"] == list(AcquisitionRanges().voxel_size) and d["presets"] == ["random"]
    assert d["noise"] == "rician or non-central chi (2-32 coils)" and d["coils"] == [1, 32]
    rician = stream_domain(phantom_recipe("random", {"randomize": True,
                                                     "acquisition_ranges": {"rician_probability": 1.0}}))
    assert rician["noise"] == "rician" and rician["coils"] == [1, 1]
    chi = stream_domain(phantom_recipe("random", {"randomize": True, "acquisition_ranges": {
        "rician_probability": 0.0, "coils": [4, 16]}}))
    assert chi["noise"] == "non-central chi (4-16 coils)" and chi["coils"] == [4, 16]
    fixed = stream_domain(PhantomConfig(preset="random", bvals=(1000.0, 2000.0), snr=20.0))
    assert fixed["bvals"] == [1000.0, 2000.0] and fixed["snr"] == [20.0, 20.0]


@pytest.mark.parametrize("bvals,voxel,snr,expected", [
    ([0, 1000, 1000], [2.0, 2.0, 2.0], 20.0, []),
    ([0, 3000, 3000], [2.0, 2.0, 2.0], 20.0, ["b-values 3000-3000"]),
    ([0, 1000], [1.25, 1.25, 1.25], 20.0, ["voxel size 1.25"]),
    ([0, 1000], [2.0, 2.0, 2.0], 4.0, ["SNR about 4, under"]),
    ([0, 1000], [2.0, 2.0, 2.0], 90.0, ["SNR about 90, above"]),
    ([0, 400, 3000], [1.0, 1.0, 1.0], None, ["b-values 400-3000", "voxel size 1"]),   # no SNR: not checked
])
def test_check_domain_names_each_setting_outside(bvals, voxel, snr, expected):
    found = check_domain(DOMAIN, np.array(bvals, float), np.array(voxel), snr)
    assert len(found) == len(expected) and all(e in f for e, f in zip(expected, found))
    assert check_domain(None, np.array(bvals, float), np.array(voxel), snr) == []   # weights without a domain


def test_snr_estimate_follows_the_phantoms_definition():
    for snr in (10.0, 40.0):
        p = simulate(PhantomConfig(preset="crossing", seed=1, snr=snr, nb0=6, ndirs=6))
        estimate = estimate_snr(p.data[..., p.bvals < 50], p.wm)
        assert 0.9 * snr < estimate < 1.35 * snr   # b0 of white matter over sigma (median b0 sits above s0_fibre)
    assert estimate_snr(p.data[..., :1], p.wm) is None          # one b0: no estimate


def test_fit_records_and_warns_outside_its_domain():
    p = simulate(PhantomConfig(preset="crossing", seed=2, snr=20.0, nb0=3, bvals=(1000.0, 2000.0), ndirs=(60, 60)))
    torch.manual_seed(0)
    model = QCGTensorModel(QCGDTI(QCGConfig(widths=(4, 8))).eval(), patch=16, meta={"domain": DOMAIN})
    inside = model.fit(p.data, p.bvals, p.bvecs, p.mask, fixed_six(p.bvals, p.bvecs, 1000.0), voxel_size=[2.0] * 3)
    assert inside.params["domain_warnings"] == [] and 15 < inside.params["b0_snr_estimate"] < 30
    outside = model.fit(p.data, p.bvals, p.bvecs, p.mask, fixed_six(p.bvals, p.bvecs, 2000.0), voxel_size=[2.0] * 3)
    assert len(outside.params["domain_warnings"]) == 1 and "b-values 2000" in outside.params["domain_warnings"][0]
    assert outside.params["training_domain"] == DOMAIN


def test_relative_loss_weighs_each_voxel_by_its_diffusivity():
    target = torch.zeros(1, 6, 2, 1, 1)
    target[0, [0, 2, 5], 0] = 0.5      # MD 0.5: scale (0.5 + 0.5)^2 = 1
    target[0, [0, 2, 5], 1] = 2.5      # MD 2.5: scale 9
    pred = target + 1.0
    batch = {"target": target, "mask": torch.ones(1, 2, 1, 1), "pairs": None, "q": None}

    class Fixed(torch.nn.Module):
        def forward(self, pairs, q):
            return pred

    mse, m = QCGTask("mse").loss(Fixed(), batch)
    rel, _ = QCGTask("relative").loss(Fixed(), batch)
    assert float(mse) == pytest.approx(1.0) and m["rmse_um2_ms"] == pytest.approx(1.0)
    assert float(rel) == pytest.approx((1.0 + 1.0 / 9.0) / 2.0)
    with pytest.raises(Exception, match="loss must be one of"):
        QCGTask("l1")


def test_anisotropic_loss_weighs_white_matter_by_its_fa():
    target = torch.zeros(1, 6, 2, 1, 1)
    target[0, [0, 2, 5], 0] = 0.5                       # isotropic, MD 0.5: weight 1
    target[0, [0, 2, 5], 1] = torch.tensor([1.3, 0.1, 0.1])[:, None, None]  # MD 0.5, FA 0.85
    pred = target + 1.0
    batch = {"target": target, "mask": torch.ones(1, 2, 1, 1), "pairs": None, "q": None}

    class Fixed(torch.nn.Module):
        def forward(self, pairs, q):
            return pred

    fa = float(np.sqrt(1.5 * ((1.3 - 0.5) ** 2 + 2 * 0.4 ** 2) / (1.3 ** 2 + 2 * 0.1 ** 2)))
    loss, _ = QCGTask("anisotropic").loss(Fixed(), batch)
    assert float(loss) == pytest.approx((1.0 + 1.0 + 10.0 * fa ** 2) / 2.0, rel=1e-5)


def _prolate(fa_axis: np.ndarray, l1: float = 1.7, l2: float = 0.3) -> np.ndarray:
    """DIPY-order elements of the prolate tensor with eigenvalues (l1, l2, l2) along the unit ``fa_axis``."""
    e = fa_axis / np.linalg.norm(fa_axis)
    d = l2 * np.eye(3) + (l1 - l2) * np.outer(e, e)
    return np.array([d[0, 0], d[0, 1], d[1, 1], d[0, 2], d[1, 2], d[2, 2]])


def _task_loss(kind: str, pred: torch.Tensor, target: np.ndarray) -> torch.Tensor:
    """Loss of one predicted tensor (6,) against several target voxels (6, V)."""
    target = torch.tensor(target, dtype=torch.float32)[None, :, :, None, None]
    batch = {"target": target, "mask": torch.ones(1, target.shape[2], 1, 1), "pairs": None, "q": None}

    class Fixed(torch.nn.Module):
        def forward(self, pairs, q):
            return pred[None, :, None, None, None].expand_as(target)

    return QCGTask(kind).loss(Fixed(), batch)[0]


def _best_prediction(kind: str, target: np.ndarray) -> torch.Tensor:
    """The one tensor that minimises ``kind``'s loss over the target voxels."""
    pred = torch.tensor(target.mean(axis=1), dtype=torch.float32, requires_grad=True)
    optimiser = torch.optim.Adam([pred], lr=0.01)
    for _ in range(1500):
        optimiser.zero_grad()
        _task_loss(kind, pred, target).backward()
        optimiser.step()
    return pred.detach()


def test_decompose_gives_the_eigenvalue_fa_and_md():
    from difftract.models.qcgdti.data import _fa
    from difftract.models.qcgdti.model import frobenius2 as _frobenius2, tensor_parts as decompose

    rng = np.random.default_rng(0)
    m = rng.normal(size=(50, 3, 3))
    d = torch.tensor(m @ m.transpose(0, 2, 1) + 0.05 * np.eye(3), dtype=torch.float64)
    lt = T.lower_triangular(d).movedim(-1, 1)[..., None, None, None]     # (50, 6, 1, 1, 1)
    md, fa, shape = decompose(lt, eps=0.0)
    assert torch.allclose(fa, _fa(lt), atol=1e-6)
    assert torch.allclose(md[:, 0, 0, 0], torch.linalg.eigvalsh(d).mean(-1), atol=1e-12)
    assert torch.allclose(_frobenius2(shape), torch.ones_like(fa), atol=1e-9)    # unit deviatoric parts


def test_decomposed_loss_does_not_shrink_fa_where_the_direction_is_uncertain():
    # Two voxels that look alike to the network, whose true axes (FA 0.80) are 40 degrees
    # apart: the element-wise mean is the squared-error optimum, and it is less anisotropic
    # than either; the decomposed loss's optimum keeps their FA.
    from difftract.models.qcgdti.model import tensor_parts as decompose

    a = np.radians(20.0)
    target = np.stack([_prolate(np.array([np.cos(a), np.sin(a), 0.0])),
                       _prolate(np.array([np.cos(a), -np.sin(a), 0.0]))], axis=1)
    fa = lambda x: float(decompose(x[None, :, None, None, None])[1])  # noqa: E731
    true_fa = fa(torch.tensor(target[:, 0]))
    relative, decomposed = _best_prediction("relative", target), _best_prediction("decomposed", target)
    assert fa(relative) < true_fa - 0.05
    assert fa(decomposed) == pytest.approx(true_fa, abs=0.005)
    e_relative = np.linalg.eigh(T.from_lower_triangular(relative).numpy())[1][:, -1]
    e_decomposed = np.linalg.eigh(T.from_lower_triangular(decomposed).numpy())[1][:, -1]
    assert abs(e_relative[0]) > 0.999 and abs(e_decomposed[0]) > 0.999     # both along the mean axis
    assert float(_task_loss("decomposed", torch.tensor(target[:, 0], dtype=torch.float32), target[:, :1])) \
        == pytest.approx(0.0, abs=1e-6)


def test_decomposed_loss_has_finite_gradients_at_an_isotropic_prediction():
    target = torch.tensor(_prolate(np.array([0.0, 0.0, 1.0])), dtype=torch.float32)[None, :, None, None, None]
    pred = torch.zeros(1, 6, 1, 1, 1)
    pred[0, [0, 2, 5]] = 0.7
    pred.requires_grad_(True)

    class Fixed(torch.nn.Module):
        def forward(self, pairs, q):
            return pred

    batch = {"target": target, "mask": torch.ones(1, 1, 1, 1), "pairs": None, "q": None}
    loss, metrics = QCGTask("decomposed").loss(Fixed(), batch)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert metrics["fa_bias_wm"] == pytest.approx(-metrics["fa_mae"], abs=1e-3) and metrics["fa_mae"] > 0.5


def test_the_anisotropy_gain_keeps_md_and_scales_fa_and_starts_at_one():
    from difftract.models.qcgdti.model import tensor_parts as decompose
    from difftract.models.qcgdti.model import load_without_gain, scale_anisotropy

    lt = torch.tensor(_prolate(np.array([1.0, 2.0, 0.5]), 1.2, 0.4), dtype=torch.float64)[None, :, None, None, None]
    md, fa, shape = decompose(lt, eps=0.0)
    md2, fa2, shape2 = decompose(scale_anisotropy(lt, torch.full((1, 1, 1, 1, 1), 1.5, dtype=torch.float64)), eps=0.0)
    assert torch.allclose(md2, md) and torch.allclose(shape2, shape) and float(fa2) > float(fa) + 0.1
    assert torch.allclose(scale_anisotropy(lt, torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)), lt)

    torch.manual_seed(0)
    plain = QCGDTI(QCGConfig(widths=(4, 8)))
    gained = QCGDTI(QCGConfig(widths=(4, 8), anisotropy_gain=True))
    load_without_gain(gained, plain.state_dict())
    pairs, q = torch.rand(1, 6, 2, 8, 8, 8) + 0.5, torch.rand(1, 6, 4)
    with torch.no_grad():
        assert torch.allclose(gained(pairs, q), plain(pairs, q), atol=1e-6)
    with pytest.raises(ConfigError, match="do not fit"):
        load_without_gain(gained, QCGDTI(QCGConfig(widths=(4, 4))).state_dict())


def test_balanced_loss_weighs_every_true_fa_bin_alike():
    from difftract.models.qcgdti.data import _bin_weights

    fa = torch.tensor([0.05, 0.1, 0.15, 0.5, 0.9, 0.95])[None, :, None, None]
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])[None, :, None, None]
    w = _bin_weights(fa, mask) * mask
    assert float(w.sum()) == pytest.approx(float(mask.sum()))                 # mean 1 over the mask
    totals = [float(w[(fa >= lo) & (fa < lo + 0.2)].sum()) for lo in (0.0, 0.4, 0.8)]
    assert totals == pytest.approx([5 / 3] * 3)                                 # three occupied bins, equal shares


def test_the_anisotropy_gain_stops_before_an_eigenvalue_turns_negative():
    from difftract.models.qcgdti.model import PSD_MARGIN, scale_anisotropy

    lt = torch.tensor(_prolate(np.array([0.0, 1.0, 0.0]), 1.7, 0.3), dtype=torch.float64)[None, :, None, None, None]
    out = scale_anisotropy(lt, torch.full((1, 1, 1, 1, 1), 10.0, dtype=torch.float64))
    evals = torch.linalg.eigvalsh(T.from_lower_triangular(out[0, :, 0, 0, 0]))
    md = (1.7 + 0.6) / 3
    assert float(evals.mean()) == pytest.approx(md) and float(evals[0]) == pytest.approx((1 - PSD_MARGIN) * md)
    small = scale_anisotropy(lt, torch.full((1, 1, 1, 1, 1), 1.2, dtype=torch.float64))   # below the cap: exact
    lowest = torch.linalg.eigvalsh(T.from_lower_triangular(small[0, :, 0, 0, 0]))[0]
    assert float(lowest) == pytest.approx(md - 1.2 * (md - 0.3))


def test_a_partly_fine_tuned_network_is_trusted_where_both_stages_were_trained():
    from difftract.training.domain import intersect_domains

    stream = {"bvals": [500.0, 3000.0], "snr": None, "voxel_size_mm": [2.0, 2.5], "tissue": "randomised"}
    start = {"bvals": [1000.0, 3000.0], "snr": [10.0, 40.0], "voxel_size_mm": [1.0, 1.5], "nb0": [2, 2],
             "tissue": "one"}
    both = intersect_domains(stream, start)
    assert both["bvals"] == [1000.0, 3000.0]
    assert both["snr"] == [10.0, 40.0] and both["nb0"] == [2, 2]       # open, or only the start's: the start's
    assert both["voxel_size_mm"] == [2.0, 1.5]                          # no overlap: an empty range
    assert both["tissue"] == "randomised" and both["init_domain"] == start
    assert intersect_domains(stream, None) == stream
    warned = check_domain(both, np.array([0.0, 600.0, 600.0]), np.array([2.0] * 3), 3.0)
    assert any("600" in w for w in warned) and any("voxel" in w for w in warned) and any("SNR" in w for w in warned)


@pytest.mark.parametrize("gain_input", ["invariant", "calibration"])
def test_a_gain_of_another_input_starts_at_one_and_round_trips_its_config(gain_input):
    from difftract.models.qcgdti.model import build_model, load_without_gain

    torch.manual_seed(0)
    plain = QCGDTI(QCGConfig(widths=(4, 8)))
    gained = QCGDTI(QCGConfig(widths=(4, 8), anisotropy_gain=True, gain_input=gain_input))
    load_without_gain(gained, plain.state_dict())
    pairs, q = torch.rand(2, 6, 2, 8, 8, 8) + 0.5, torch.rand(2, 6, 4)
    with torch.no_grad():
        assert torch.allclose(gained(pairs, q), plain(pairs, q), atol=1e-6)
    assert build_model(gained.config.as_dict()).config == gained.config
    assert "gain_input" not in QCGConfig(anisotropy_gain=True).as_dict()    # the shipped file's config
    assert "anisotropy_gain" not in QCGConfig().as_dict()                   # as before the branch
    with pytest.raises(ConfigError, match="gain input"):
        QCGConfig(gain_input="lsq")


def test_the_md_gain_starts_at_one_scales_md_alone_and_needs_the_gain_branch():
    from difftract.models.qcgdti.model import MAX_LOG_MD_GAIN, build_model, load_without_gain
    from difftract.models.qcgdti.model import tensor_parts as decompose

    torch.manual_seed(0)
    gained = QCGDTI(QCGConfig(widths=(4, 8), anisotropy_gain=True, gain_input="calibration"))
    with torch.no_grad():
        gained.gain[-1].bias.fill_(0.2)                                 # a trained anisotropy gain
    both = QCGDTI(QCGConfig(widths=(4, 8), anisotropy_gain=True, gain_input="calibration", md_gain=True))
    assert load_without_gain(both, gained.state_dict()) == ["md_gain"]
    pairs = torch.rand(2, 6, 2, 8, 8, 8) + 0.5
    q = torch.cat([torch.nn.functional.normalize(torch.randn(2, 6, 3), dim=-1), torch.ones(2, 6, 1)], dim=-1)
    with torch.no_grad():
        before = both(pairs, q)
        assert torch.allclose(before, gained(pairs, q), atol=1e-6)      # the new branch starts at 1
        both.md_gain[-1].bias.fill_(0.3)                                # MD scale e^0.3
        after = both(pairs, q)
        both.md_gain[-1].bias.fill_(5.0)
        capped = both(pairs, q)
    md0, fa0, shape0 = decompose(before.double(), eps=0.0)
    md1, fa1, shape1 = decompose(after.double(), eps=0.0)
    assert torch.allclose(md1, md0 * np.exp(0.3), rtol=1e-5, atol=1e-5)   # float32 sums: 1e-5 where MD ~ 0
    assert torch.allclose(fa1, fa0, atol=1e-5) and torch.allclose(shape1, shape0, atol=1e-5)
    assert torch.allclose(capped, before * np.exp(MAX_LOG_MD_GAIN), rtol=1e-5)
    assert build_model(both.config.as_dict()).config == both.config
    assert "md_gain" not in QCGConfig(anisotropy_gain=True).as_dict()   # files written before it still resume
    with pytest.raises(ConfigError, match="anisotropy_gain"):
        QCGConfig(md_gain=True)


@pytest.mark.parametrize("snr", [8.0, 20.0, 50.0])
def test_patch_snr_reads_the_noise_of_a_patch_with_edges_and_background(snr):
    from difftract.models.qcgdti.model import patch_snr

    generator = torch.Generator().manual_seed(int(snr))
    b0 = torch.ones(2, 32, 32, 32)
    b0[:, :, :12] = 1.5                  # two tissues and their edge, across y
    noisy = b0 + torch.randn(b0.shape, generator=generator) / snr
    noisy[1, :, :, :6] = 0.0             # background without signal or noise, across z: ignored
    # each axis's median of ~25k residuals spreads by ~1%; x crosses no edge
    assert torch.allclose(patch_snr(noisy), torch.full((2,), snr), rtol=0.05)


def test_patch_snr_of_a_patch_without_tissue_is_the_default():
    from difftract.models.qcgdti.model import DEFAULT_SNR, patch_snr

    assert patch_snr(torch.zeros(1, 16, 16, 16)).item() == DEFAULT_SNR
    assert patch_snr(torch.ones(1, 16, 16, 16)).item() == DEFAULT_SNR     # no noise to read


def test_a_calibration_gain_reads_only_its_voxel():
    from difftract.models.qcgdti.model import calibration_inputs, six_direction_fit

    torch.manual_seed(0)
    gained = QCGDTI(QCGConfig(widths=(4, 8), anisotropy_gain=True, gain_input="calibration"))
    # its inputs: an isotropic head; six DWIs of a tensor along x (their least-squares tensor); b; b0
    head = torch.zeros(1, 6, 4, 4, 4)
    head[:, 0], head[:, 2], head[:, 5] = 1.0, 1.0, 1.0     # um^2/ms
    g = torch.tensor([[1.0, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1]]) / 2 ** 0.5   # DSM6
    b = torch.tensor([1.0, 1, 1, 2, 2, 2])                  # ms/um^2 (b / 1000 in s/mm^2)
    q = torch.cat([g, b[:, None]], dim=1)[None]
    D = torch.diag(torch.tensor([1.7, 0.3, 0.3]))
    signal = torch.exp(-b * torch.einsum("ki,ij,kj->k", g, D, g))
    pairs = torch.ones(1, 6, 2, 4, 4, 4)
    pairs[:, :, 1] = signal.view(1, 6, 1, 1, 1)
    x = calibration_inputs(head, six_direction_fit(pairs, q), pairs, q)
    assert x.shape == (1, 7, 4, 4, 4)
    assert torch.allclose(x[:, 0], torch.tensor(0.0), atol=1e-3) and torch.allclose(x[:, 1], torch.tensor(1.0))
    fa = T.fractional_anisotropy(torch.tensor([1.7, 0.3, 0.3]))
    assert torch.allclose(x[:, 2], fa, atol=1e-4) and torch.allclose(x[:, 3], torch.tensor(2.3 / 3), atol=1e-4)
    assert torch.allclose(x[:, 4], torch.tensor(1.5))
    assert torch.allclose(x[:, 5:], torch.tensor(0.0))     # a patch too small to read its noise: SNR 20; b0 1
    # the gain is a function of the voxel's own numbers: equal inputs, equal gains, wherever they are
    with torch.no_grad():
        for p in gained.gain.parameters():
            p.normal_()
        log_gain = gained.gain(x)
    assert torch.allclose(log_gain, log_gain[..., :1, :1, :1].expand_as(log_gain))


def test_a_calibration_gain_reads_a_full_precision_fit_under_autocast():
    torch.manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(1, 6, 3), dim=-1)     # not DSM6: a worse-conditioned fit
    q = torch.cat([g, torch.full((1, 6, 1), 2.0)], dim=-1)
    pairs = torch.rand(1, 6, 2, 8, 8, 8) * 0.5 + 0.3
    gained = QCGDTI(QCGConfig(widths=(4, 8), anisotropy_gain=True, gain_input="calibration")).eval()
    seen = []
    gained.gain[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].float()))
    with torch.no_grad():
        gained(pairs, q)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            gained(pairs, q)
    exact, autocast = seen
    # the least-squares FA and MD only rounded once to bfloat16 at the end (a relative 2^-8),
    # where a bfloat16 fit of these directions errs by up to 0.06 in FA and 0.3 in its elements
    assert torch.allclose(autocast[:, 2:4], exact[:, 2:4], rtol=1e-2, atol=1e-2)


def test_the_mean_over_spread_of_pure_noise_follows_the_coil_count():
    from difftract.training.domain import chi_ratio

    assert chi_ratio([1, 4, 16]) == pytest.approx([1.913, 3.94, 7.97], abs=0.01)   # Rayleigh: sqrt(pi / (4 - pi))
    noise = np.random.default_rng(0).normal(size=(200_000, 8, 2))               # 8 coils, real and imaginary
    magnitude = np.sqrt((noise ** 2).sum(axis=(1, 2)))
    assert magnitude.mean() / magnitude.std() == pytest.approx(float(chi_ratio(8)), rel=0.01)


@pytest.mark.parametrize("coils", [1, 4, 16])
def test_the_background_tells_the_coil_count_and_a_rician_network_warns(coils):
    from difftract.training.domain import estimate_coils, scan_coils

    ranges = AcquisitionRanges(snr=(20.0, 20.0), rician_probability=1.0 if coils == 1 else 0.0,
                               coils=(max(coils, 2),) * 2)
    p = simulate(PhantomConfig(preset="random", seed=3, randomize=True, voxel_size=2.0, acquisition_ranges=ranges,
                               snr=20.0))
    assert scan_coils(p.data, p.bvals, p.mask) == coils
    b0s = p.data[..., p.bvals < 50]
    assert estimate_coils(b0s * p.mask[..., None], p.mask) is None          # a masked background says nothing
    rician = {"bvals": [1000.0, 3000.0], "coils": [1, 1]}
    warned = check_domain(rician, np.array([1000.0]), coils=scan_coils(p.data, p.bvals, p.mask))
    assert len(warned) == (coils > 1) and all(f"{coils}-coil" in w and "Rician" in w for w in warned)
