"""DDTracking's network: variants, shapes, the GRU's step mode against its sequence mode."""

from __future__ import annotations

import pytest
import torch

from difftract.errors import ConfigError
from difftract.models.ddtracking import diffusion
from difftract.models.ddtracking.model import VARIANTS, DDTracking, DDTrackingConfig, build_model

TINY = dict(conv_channels=4, mlp_hidden=16, z_dim=8, v_dim=8, gru_hidden=16, gru_layers=2, time_dim=8,
            denoiser_width=8)


def tiny(variant="full", **kw) -> DDTracking:
    torch.manual_seed(0)
    return DDTracking(DDTrackingConfig(variant=variant, **{**TINY, **kw}))


def packed(lengths, m=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = sum(lengths)
    return (torch.randn(P, m, 3, 3, 3, generator=g), torch.nn.functional.normalize(torch.randn(P, 3, generator=g), dim=1),
            torch.tensor(lengths))


def test_paper_defaults_and_size():
    c = DDTrackingConfig()
    assert (c.z_dim, c.v_dim, c.gru_hidden, c.gru_layers, c.n_coeffs) == (192, 192, 512, 2, 28)
    n = sum(p.numel() for p in DDTracking(c).parameters())
    assert n * 4 < 20e6           # float32 weights under 20 MB


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_forward(variant):
    m = tiny(variant)
    patches, prev, lengths = packed([5, 3, 7])
    if m.config.generative:
        y, k = torch.randn(15, 3), torch.rand(15, 1)
        out = m(patches, prev, lengths, y, k)
        assert out["h"].shape == out["eps"].shape == (15, 3)
        with pytest.raises(ConfigError):
            m(patches, prev, lengths)
    else:
        assert m(patches, prev, lengths)["direction"].shape == (15, 3)
    assert (m.spatial.v is not None) == (variant in ("spatial_temporal", "full"))


def test_local_condition_reaches_the_full_denoiser_only():
    """Changing a point's neighbourhood changes its prediction through v only in the full model."""
    for variant, local in (("full", True), ("spatial_temporal_generative", False)):
        m = tiny(variant)
        for p in m.parameters():          # FiLM starts as the identity: make it act
            torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else None
        patches, prev, lengths = packed([4])
        c, v = m.contexts(patches, prev, lengths)
        y, k = torch.randn(4, 3), torch.full((4, 1), 0.5)
        h1, _ = m.denoise(y, k, c, v)
        v2 = None if v is None else v + 1.0
        h2, _ = m.denoise(y, k, c, v2)
        blocks = (m.denoiser.enc1, m.denoiser.enc2, m.denoiser.mid, m.denoiser.dec2, m.denoiser.dec1)
        assert all((b.film_l is not None) == local for b in blocks)
        assert (v is not None) == local
        if local:
            assert not torch.allclose(h1, h2)


def test_one_head_derives_eps():
    m = tiny(one_head=True)
    assert m.denoiser.head_eps is None
    patches, prev, lengths = packed([6])
    y, k = torch.randn(6, 3), torch.rand(6, 1) * 0.9 + 0.05
    out = m(patches, prev, lengths, y, k)
    torch.testing.assert_close(out["eps"], diffusion.eps_from_h(y, out["h"], k))


def test_sequence_contexts_equal_stepwise_gru():
    """Training's packed sequences and tracking's one-point steps give the same contexts."""
    m = tiny().eval()
    patches, prev, lengths = packed([5, 2, 4])
    with torch.no_grad():
        c_seq, _ = m.contexts(patches, prev, lengths)
        rows, start = [], 0
        for n in lengths.tolist():
            state = m.temporal.initial(1)
            for t in range(start, start + n):
                c, _, state = m.step(patches[t:t + 1], prev[t:t + 1], state)
                rows.append(c)
            start += n
    torch.testing.assert_close(c_seq, torch.cat(rows), atol=1e-5, rtol=1e-5)


def test_direction_modes():
    m = tiny().eval()
    c, v = torch.randn(10, 16), torch.randn(10, 8)
    with torch.no_grad():
        d1 = m.direction(c, v, steps=1)
        assert torch.allclose(d1.norm(dim=1), torch.ones(10))
        s1 = m.direction(c, v, steps=3, stochastic=True, generator=torch.Generator().manual_seed(1))
        s2 = m.direction(c, v, steps=3, stochastic=True, generator=torch.Generator().manual_seed(1))
        s3 = m.direction(c, v, steps=3, stochastic=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(s1, s2) and not torch.allclose(s1, s3)
    r = tiny("spatial_temporal").eval()
    with torch.no_grad():
        torch.testing.assert_close(r.direction(c, v).norm(dim=1), torch.ones(10))


def test_config_checks():
    with pytest.raises(ConfigError, match="variant"):
        DDTrackingConfig(variant="nope")
    with pytest.raises(ConfigError, match="positive"):
        DDTrackingConfig(gru_hidden=0)
    with pytest.raises(ConfigError, match="unknown"):
        build_model({"variant": "full", "bogus": 1})
    assert isinstance(build_model({"variant": "temporal", **TINY}), DDTracking)
