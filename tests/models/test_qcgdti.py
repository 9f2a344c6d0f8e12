"""QCG-DTI: blocks, model variants, six-DWI selection and checks, data, sliding-window prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.qcgdti.blocks import QCF, MRDBlock, MRUnit, ResizeConv
from difftract.models.qcgdti.data import (PatchDataset, QCGSubject, QCGTask, brain_scale, make_input, pad_to,
                                          q_coordinates, reference_tensor)
from difftract.models.qcgdti.model import VARIANTS, QCGConfig, QCGDTI, q_embedding, six_direction_fit
from difftract.models.qcgdti.predict import QCGTensorModel, _starts, _window
from difftract.models.qcgdti.schemes import (DSM6, SixSet, check_six, design_condition, fixed_six, flexible_pool,
                                             flexible_six)
from difftract.phantom.signal import make_scheme
from difftract.phantom.simulate import PhantomConfig, simulate


@pytest.fixture(scope="module")
def subject():
    """A small crossing phantom with 90 + 60 directions and its reference tensor."""
    ph = simulate(PhantomConfig(preset="crossing", seed=3, bvals=(1000.0, 2000.0), ndirs=(90, 60), nb0=2, snr=30))
    ref = reference_tensor(ph.data, ph.bvals, ph.bvecs, ph.mask)
    s = QCGSubject("xing", pad_to(ph.data, 16, 4), ph.bvals, ph.bvecs, pad_to(ph.mask, 16, 4), pad_to(ref, 16, 4),
                   flexible_pool(ph.bvals, ph.bvecs, 20, 0), fixed_six(ph.bvals, ph.bvecs))
    return s, ph, ref


# ---------------------------------------------------------------- blocks and model

def test_blocks_keep_shape_and_qcf_starts_as_identity():
    x = torch.randn(2, 4, 8, 8, 8)
    assert MRUnit(4)(x).shape == x.shape and MRDBlock(4)(x).shape == x.shape
    assert ResizeConv(4, 2)(x).shape == (2, 2, 16, 16, 16)
    qcf = QCF(4, 4, 8)
    q = torch.randn(2, 4)
    assert torch.equal(qcf(x, q), x)
    torch.nn.init.normal_(qcf.film[-1].weight)
    out_a, out_b = qcf(x, q), qcf(x, q + 1.0)
    assert not torch.allclose(out_a, out_b)          # the modulation depends on the q-space coordinate
    # alpha * F + beta: one scale and one shift per channel and sample
    flat_x, flat_out = x.flatten(2), out_a.flatten(2)
    for b in range(2):
        for c in range(4):
            slope, intercept = np.polyfit(flat_x[b, c].detach().numpy(), flat_out[b, c].detach().numpy(), 1)
            fitted = slope * flat_x[b, c] + intercept
            torch.testing.assert_close(fitted.float(), flat_out[b, c].detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_forward_backward(variant):
    torch.manual_seed(0)
    model = QCGDTI(QCGConfig(variant=variant, widths=(4, 8)))
    pairs, q = torch.randn(2, 6, 2, 8, 8, 12), torch.randn(2, 6, 4)
    out = model(pairs, q)
    assert out.shape == (2, 6, 8, 8, 12)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    has_qcf = any("qcf" in name for name, _ in model.named_parameters())
    assert has_qcf == (variant in ("full", "resnet"))


def test_q_coordinates_reach_the_learned_part_only_with_qcf():
    torch.manual_seed(0)
    pairs, q = torch.randn(1, 6, 2, 8, 8, 8), torch.randn(1, 6, 4)
    for variant, sensitive in (("full", True), ("no_qcf", False), ("concat", True)):
        model = QCGDTI(QCGConfig(variant=variant, widths=(4, 8), lsq_input=False))
        for m in model.modules():                    # make QCF non-trivial
            if isinstance(m, QCF):
                torch.nn.init.normal_(m.film[-1].weight, std=0.1)
        changed = not torch.allclose(model(pairs, q), model(pairs, q + 0.5))
        assert changed == sensitive, variant


def test_six_direction_fit_is_exact_and_feeds_the_last_layer():
    """The least-squares tensor of six noise-free DWIs is the true tensor, for mixed shells too."""
    D = torch.tensor([[0.9, 0.1, 0.05], [0.1, 0.5, 0.02], [0.05, 0.02, 0.4]])
    g = torch.tensor(DSM6, dtype=torch.float32)
    b = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])        # b / 1000
    S = torch.exp(-b * torch.einsum("ni,ij,nj->n", g, D, g))
    pairs = torch.stack([torch.ones(6), S], 1)[None, :, :, None, None, None].repeat(1, 1, 1, 8, 8, 8) * 0.8
    q = torch.cat([g, b[:, None]], 1)[None]
    expected = D[[0, 0, 1, 0, 1, 2], [0, 1, 1, 2, 2, 2]]
    torch.testing.assert_close(six_direction_fit(pairs, q)[0, :, 3, 3, 3], expected, rtol=1e-4, atol=1e-5)
    empty = six_direction_fit(torch.zeros(1, 6, 2, 2, 2, 2), q)
    assert torch.equal(empty, torch.zeros_like(empty))       # no signal (padding): zero tensor
    noisy = pairs.clone()
    noisy[0, 0, 1] = 2.0                                     # a DWI above its b0: ADC clipped at 0, not negative
    assert torch.isfinite(six_direction_fit(noisy, q)).all()
    for lsq, channels in ((True, 4 + 6), (False, 4)):
        assert QCGDTI(QCGConfig(widths=(4, 8), lsq_input=lsq)).head.in_channels == channels


def test_direction_signs_do_not_matter():
    """g and -g are the same measurement: the q embedding makes the network blind to the sign."""
    torch.manual_seed(0)
    model = QCGDTI(QCGConfig(widths=(4, 8)))
    for m in model.modules():
        if isinstance(m, QCF):
            torch.nn.init.normal_(m.film[-1].weight, std=0.1)
    pairs, q = torch.randn(1, 6, 2, 8, 8, 8), torch.randn(1, 6, 4)
    flipped = q.clone()
    flipped[:, ::2, :3] *= -1
    torch.testing.assert_close(model(pairs, q), model(pairs, flipped))
    emb = q_embedding(q)
    g = q[0, 0, :3]
    assert emb.shape == (1, 6, 7) and float(emb[0, 0, :3].sum()) == pytest.approx(float(g.dot(g)), rel=1e-6)


def test_model_refuses_bad_shapes():
    model = QCGDTI(QCGConfig(widths=(4, 8, 16)))
    with pytest.raises(ConfigError, match="multiple of 4"):
        model(torch.randn(1, 6, 2, 8, 8, 10), torch.randn(1, 6, 4))
    with pytest.raises(ConfigError, match="pairs"):
        model(torch.randn(1, 5, 2, 8, 8, 8), torch.randn(1, 5, 4))
    with pytest.raises(ConfigError, match="variant"):
        QCGConfig(variant="unet")


# ---------------------------------------------------------------- six-DWI sets

def test_dsm6_condition_number_is_skares():
    assert design_condition(DSM6) == pytest.approx(1.3229, abs=5e-4)


def test_fixed_six_finds_dsm6_in_a_scheme_that_holds_it():
    bvals, bvecs = make_scheme((1000.0,), (30,), 1, np.random.default_rng(0))
    bvals = np.concatenate([bvals, np.full(6, 1000.0)])
    bvecs = np.concatenate([bvecs, -DSM6[::-1]])      # opposite signs, other order
    six = fixed_six(bvals, bvecs)
    assert sorted(six.indices) == list(range(31, 37))
    assert six.mean_angle == pytest.approx(0.0, abs=1e-5) and six.condition < 1.33


def test_flexible_sets_meet_both_criteria_and_follow_the_seed():
    bvals, bvecs = make_scheme((1000.0, 3000.0), (90, 90), 1, np.random.default_rng(1))
    sets = [flexible_six(bvals, bvecs, np.random.default_rng(s)) for s in range(20)]
    for six in sets:
        assert six.mean_angle < 5 and six.condition < 2 and len(set(six.indices)) == 6
        assert np.all(np.abs(bvals[list(six.indices)] - six.shell) < 1)
    assert {s.shell for s in sets} == {1000.0, 3000.0}
    again = flexible_six(bvals, bvecs, np.random.default_rng(0))
    assert again == sets[0]
    pool = flexible_pool(bvals, bvecs, 4, seed=0)
    assert [p.shell for p in pool] == [1000.0, 3000.0, 1000.0, 3000.0]


def test_flexible_six_draws_the_sets_a_try_by_try_search_draws():
    """Rotations are tried 256 at once, but the set found and the rng left behind are those of one
    rotation drawn and tested per try (the recipe of the shipped QCG-DTI weights draws its pools so)."""
    from scipy.spatial.transform import Rotation

    bvals, bvecs = make_scheme((1000.0, 2000.0, 3000.0), (60, 60, 45), 1, np.random.default_rng(3))
    tries = []

    def one_at_a_time(rng, shell):
        m = np.abs(bvals - shell) < 1
        tries.append(0)
        while True:
            tries[-1] += 1
            target = DSM6 @ Rotation.random(random_state=rng).as_matrix().T
            cos = np.abs(target @ bvecs[m].T)
            pick = cos.argmax(axis=1)
            idx = np.flatnonzero(m)[pick]
            angle = np.degrees(np.arccos(np.clip(cos.max(axis=1), 0, 1))).mean()
            if len(set(pick.tolist())) == 6 and angle < 5 and design_condition(bvecs[idx]) < 2:
                return tuple(int(i) for i in idx)

    batched, reference = np.random.default_rng(11), np.random.default_rng(11)
    for shell in (1000.0, 2000.0, 3000.0, 2000.0, 3000.0, 1000.0):
        assert flexible_six(bvals, bvecs, batched, shell=shell).indices == one_at_a_time(reference, shell)
    assert batched.random() == reference.random()
    assert max(tries) > 256 and min(tries) < 256          # hits in the first batch and in a later one


def test_flexible_six_refuses_a_sparse_shell():
    bvals, bvecs = make_scheme((1000.0,), (12,), 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="too sparse"):
        flexible_six(bvals, bvecs, np.random.default_rng(0), max_tries=200)


def test_check_six_refuses_bad_qspace_input():
    good_b = np.array([0.0, *[1000.0] * 6])
    good_v = np.concatenate([np.zeros((1, 3)), DSM6])
    check_six(good_b, good_v)
    with pytest.raises(ConfigError, match="exactly six .* got 5"):
        check_six(good_b[:-1], good_v[:-1])
    with pytest.raises(ConfigError, match="got 0"):
        check_six(np.zeros(1), np.zeros((1, 3)))
    with pytest.raises(ConfigError, match="needs a b0"):
        check_six(good_b[1:], good_v[1:])
    collinear = np.concatenate([np.zeros((1, 3)), np.tile([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]], (3, 1))])
    with pytest.raises(ConfigError, match="collinear"):
        check_six(good_b, collinear)
    coplanar = np.concatenate([np.zeros((1, 3)), [[np.cos(a), np.sin(a), 0.0] for a in np.linspace(0, np.pi, 6, endpoint=False)]])
    with pytest.raises(ConfigError, match="cannot determine"):
        check_six(good_b, coplanar)


# ---------------------------------------------------------------- data

def test_inputs_are_scaled_by_the_brain_b0_mean():
    rng = np.random.default_rng(0)
    b0 = rng.uniform(500, 1500, (4, 4, 4)).astype(np.float32)
    mask = np.ones((4, 4, 4), bool)
    pairs = make_input(b0, b0[..., None].repeat(6, -1) * 0.5, brain_scale(b0, mask))
    assert pairs.shape == (6, 2, 4, 4, 4)
    assert pairs[:, 0].mean() == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(pairs[:, 1], pairs[:, 0] * 0.5, rtol=1e-6)
    with pytest.raises(ConfigError, match="zero"):
        brain_scale(np.zeros((2, 2, 2)), np.ones((2, 2, 2), bool))


def test_patches_are_reproducible_and_change_per_epoch(subject):
    s, _, _ = subject
    ds = PatchDataset([s], 4, patch=16, seed=7)
    a = ds[1]
    assert a["pairs"].shape == (6, 2, 16, 16, 16) and a["target"].shape == (6, 16, 16, 16)
    assert a["mask"].sum() > 0
    assert torch.equal(ds[1]["pairs"], a["pairs"])
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["pairs"], a["pairs"])
    val = PatchDataset([s], 4, patch=16, seed=7, per_epoch=False)
    first = val[2]["pairs"]
    val.set_epoch(5)
    assert torch.equal(val[2]["pairs"], first)


def test_augmentation_is_physically_consistent(subject):
    """Flips, sign changes and reordering: WLS on the augmented input equals the augmented target."""
    s, ph, _ = subject
    idx = [0, *s.fixed.indices]                      # one b0 and six DWIs: the target is their own WLS fit
    data, bvals, bvecs = ph.data[..., idx], ph.bvals[idx], ph.bvecs[idx]
    six = SixSet(tuple(range(1, 7)), 1000.0, 0.0, 1.0)
    own = QCGSubject("six", pad_to(data, 16, 4), bvals, bvecs, pad_to(ph.mask, 16, 4),
                     pad_to(reference_tensor(data, bvals, bvecs, ph.mask), 16, 4), [six], six)
    ds = PatchDataset([own], 6, patch=16, seed=1, augment=True)
    for index in range(6):
        sample = ds[index]
        q = sample["q"].numpy().astype(np.float64)
        pairs = sample["pairs"].numpy().astype(np.float64)
        volumes = np.moveaxis(np.concatenate([pairs[:1, 0], pairs[:, 1]], 0), 0, -1)
        inside = sample["mask"].numpy() > 0
        wls = reference_tensor(volumes, np.concatenate([[0.0], q[:, 3] * 1000]),
                               np.concatenate([[[0.0, 0.0, 0.0]], q[:, :3]]), inside)
        target = np.moveaxis(sample["target"].numpy(), 0, -1) * 1e-3
        # float32 pairs and target (eps 1.2e-7), a well-conditioned six-direction fit (cond ~1.3): a few
        # eps32 of each voxel's tensor scale (measured 2.7e-7); 1e-5 of it, where an inconsistent flip
        # or sign (an off-diagonal negated) is off by ~1e-1 of it
        scale = np.abs(target[inside]).max(-1, keepdims=True)
        assert np.max(np.abs(wls[inside] - target[inside]) / scale) < 1e-5, index


def test_task_loss_is_masked_mse():
    pred = torch.zeros(1, 6, 4, 4, 4)
    batch = {"target": torch.ones(1, 6, 4, 4, 4), "mask": torch.zeros(1, 4, 4, 4)}
    batch["mask"][0, :2] = 1
    batch["target"][0, :, 2:] = 100.0                 # outside the mask: ignored

    class Zero(torch.nn.Module):
        def forward(self, pairs, q):
            return pred

    loss, metrics = QCGTask().loss(Zero(), {**batch, "pairs": None, "q": None})
    assert float(loss) == pytest.approx(1.0) and metrics["rmse_um2_ms"] == pytest.approx(1.0)


# ---------------------------------------------------------------- prediction

@pytest.mark.parametrize("size,patch", [(16, 16), (40, 16), (33, 8)])
def test_sliding_window_covers_the_volume(size, patch):
    starts = _starts(size, patch, patch // 2)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all() and starts[-1] + patch == size
    assert _window(patch).min() > 0


def test_sliding_window_puts_every_voxel_back_in_place(subject):
    """A network that copies the first DWI into every element: the prediction is that map (padding,
    overlapping patches, blending and cropping), including an axis shorter than the patch."""
    _, ph, _ = subject

    class Copy(QCGDTI):
        def forward(self, pairs, q):
            return pairs[:, 0, 1][:, None].repeat(1, 6, 1, 1, 1)

    six = fixed_six(ph.bvals, ph.bvecs)
    assert ph.shape[2] < 16 < ph.shape[0]
    fit = QCGTensorModel(Copy(QCGConfig(widths=(4, 8))), patch=16).predict(
        ph.data[..., 0], ph.data[..., list(six.indices)], ph.bvals[list(six.indices)], ph.bvecs[list(six.indices)],
        ph.mask.astype(np.uint8))
    scale = ph.data[..., 0][ph.mask].mean()
    expected = ph.data[..., six.indices[0]] / scale / 1e3 * ph.mask
    np.testing.assert_allclose(fit[..., 3], expected, rtol=1e-5, atol=1e-9)


def test_prediction_of_a_constant_network_is_that_constant(subject):
    _, ph, _ = subject

    class Constant(QCGDTI):
        def forward(self, pairs, q):
            out = torch.zeros(pairs.shape[0], 6, *pairs.shape[3:])
            out[:, 0] = out[:, 2] = out[:, 5] = 0.7            # isotropic 0.7 um^2/ms
            out[:, 1] = 0.1
            return out

    model = QCGTensorModel(Constant(QCGConfig(widths=(4, 8))), patch=16)
    six = fixed_six(ph.bvals, ph.bvecs)
    fit = model.fit(ph.data, ph.bvals, ph.bvecs, ph.mask, six)
    lt = fit.lower_triangular()
    np.testing.assert_allclose(lt[ph.mask][:, [0, 1, 2, 5]], [[7e-4, 1e-4, 7e-4, 7e-4]] * int(ph.mask.sum()),
                               rtol=1e-5)
    assert np.all(lt[~ph.mask] == 0)
    assert fit.params["fit_method"] == "QCG-DTI" and fit.params["six_indices"] == list(six.indices)
    with pytest.raises(ConfigError, match="exactly six"):
        model.fit(ph.data, ph.bvals, ph.bvecs, ph.mask)        # 150 DWIs and no selection
