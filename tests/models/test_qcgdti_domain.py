"""QCG-DTI's training domain: described in the weights, checked against a scan, warned about."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftract.models.qcgdti.data import QCGTask
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
