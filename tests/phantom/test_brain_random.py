"""The brain-random preset: random bundles between grey-matter regions of the MNI152 template.

Small and fast: 3 mm voxels, a few bundles, few streamlines.
"""

from __future__ import annotations

import numpy as np
import pytest

from difftract.errors import ConfigError
from difftract.phantom import PhantomConfig, save_phantom, simulate
from difftract.phantom.brain_random import LENGTH_MM, MIN_WM_SHARE, anatomy, brain_random_layout, folds
from difftract.phantom.geometry import Bundle, disc_positions, make_tube
from difftract.phantom.presets import folds_locally

VOXEL = 3.0


def layout(seed: int, n_bundles: int = 6):
    return brain_random_layout(np.random.default_rng(seed), n_bundles=n_bundles, streamlines_per_bundle=10,
                               voxel_size=VOXEL)


@pytest.fixture(scope="module")
def layouts():
    return [layout(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def small_phantom():
    return simulate(PhantomConfig(preset="brain-random", seed=4, voxel_size=VOXEL, n_bundles=4,
                                  streamlines_per_bundle=12, snr=None, ndirs=6, nb0=1))


def test_same_seed_same_layout_other_seed_other_layout(layouts):
    again = layout(0)
    assert [b.name for b in again.bundles] == [b.name for b in layouts[0].bundles]
    for a, b in zip(again.bundles, layouts[0].bundles):
        np.testing.assert_array_equal(a.points, b.points)
        assert a.radius == b.radius and a.thickness == b.thickness
    starts = [{tuple(np.round(b.points[0], 6)) for b in lay.bundles} for lay in layouts]
    assert not (starts[0] & starts[1]) and not (starts[0] & starts[2])


def test_default_count_is_drawn_from_the_seed():
    n = len(brain_random_layout(np.random.default_rng(0), streamlines_per_bundle=2, voxel_size=VOXEL).bundles)
    assert n == np.random.default_rng(0).integers(12, 31)  # the first draw of the layout's generator


def test_bundles_join_grey_matter_through_white_matter_inside_the_brain(layouts):
    atlas = anatomy(VOXEL)
    template = atlas.template
    for lay in layouts:
        assert lay.origin is template.origin and lay.shape == template.shape
        assert set(lay.isotropic) == {"gm", "csf"}
        for bundle in lay.bundles:
            tube = make_tube(bundle)  # simulate's sampling, finer than the placement checks'
            ends = tube.centre[[0, -1]]
            assert np.all(template.sample("gm", ends) >= 0.5), bundle.name
            assert LENGTH_MM[0] <= tube.length <= LENGTH_MM[1], bundle.name
            body = (tube.s > 6.0) & (tube.s < tube.length - 6.0)
            assert np.mean(template.sample("wm", tube.centre[body]) >= 0.5) >= MIN_WM_SHARE, bundle.name
            fibres = tube.fibres(disc_positions(200, np.random.default_rng(0)))
            assert lay.domain(fibres.reshape(-1, 3)).all(), bundle.name


def test_the_fold_check_the_placer_relies_on():
    """accept() refuses every tube folds() flags, so folds() itself must see both kinds of fold."""
    straight = Bundle("straight", [(0, 0, 0), (30, 0, 0), (60, 0, 0)], radius=(3.0,))
    tight_u = Bundle("tight_u", [(0, 0, 0), (10, 0, 0), (11.5, 2, 0), (10, 4, 0), (0, 4, 0)], radius=(3.0,))
    wide_u = Bundle("wide_u", [(0, 0, 0), (30, 0, 0), (45, 15, 0), (30, 30, 0), (0, 30, 0)], radius=(3.0,))
    loop = Bundle("loop", [(0, 0, 0), (30, 0, 0), (45, 15, 0), (30, 30, 0), (10, 20, 0), (12, 5, 0), (20, 0, 1)],
                  radius=(3.0,))
    assert not folds(make_tube(straight)) and not folds(make_tube(wide_u))
    assert folds_locally(make_tube(tight_u)) and folds(make_tube(tight_u))   # radius beyond MAX_BEND x curvature radius
    loop_tube = make_tube(loop)
    assert not folds_locally(loop_tube) and folds(loop_tube)   # gently bent, but its end comes back through its start


def test_bundles_locate_their_own_fibres(layouts, locates_own_fibres):
    for lay in layouts:
        for bundle in lay.bundles:
            locates_own_fibres(bundle, stride=11)


def test_crossing_bundles_pass_through_an_earlier_bundle_at_45_degrees_or_more(layouts):
    crossings = 0
    for lay in layouts:
        tubes = [make_tube(b, ds=0.5) for b in lay.bundles]
        for k, tube in enumerate(tubes):
            if not tube.bundle.name.endswith("_cross"):
                continue
            crossings += 1
            best = 0.0  # largest crossing angle among earlier bundles that it goes through
            for host in tubes[:k]:
                dist, j = host.tree.query(tube.centre)
                i = np.argmin(dist)
                if dist[i] <= 0.5:  # the crossing point is a sample of the host's centreline
                    cos = abs(tube.tangent[i] @ host.tangent[j[i]])
                    best = max(best, np.degrees(np.arccos(min(cos, 1.0))))
            assert best >= 40.0, tube.bundle.name  # 45 drawn; the 0.5 mm sampling tilts it a little
    assert crossings > 0


def test_simulated_brain_random_phantom(small_phantom, tmp_path):
    from difftract.eval.tractometer import load_scoring, score
    from difftract.io.tractogram import load_tractogram

    p, template = small_phantom, anatomy(VOXEL).template
    np.testing.assert_allclose(p.affine[:3, 3], template.origin)
    assert p.shape == template.shape and len(p.bundles) == 4
    np.testing.assert_array_equal(p.mask, template.brain | p.wm)
    ends = np.array([s[i] for s in p.streamlines for i in (0, -1)]) * VOXEL
    assert np.median(template.sample("gm", ends)) >= 0.5
    out = save_phantom(p, tmp_path / "brain_random")
    r = score(load_tractogram(out / "tractogram.trk").streamlines, load_scoring(out))
    assert r["VB"] == 4 and r["VS_ratio"] == 1.0


def test_bad_requests_are_refused():
    with pytest.raises(ConfigError, match="at least one bundle"):
        brain_random_layout(np.random.default_rng(0), n_bundles=0, voxel_size=VOXEL)
    with pytest.raises(ConfigError, match="could not place bundle 1 of 2 in 0 tries"):
        brain_random_layout(np.random.default_rng(0), n_bundles=2, voxel_size=VOXEL, max_tries=0)
    with pytest.raises(ConfigError, match="voxel size"):
        simulate(PhantomConfig(preset="brain-random", voxel_size=5.0))
    with pytest.raises(ConfigError, match="voxel_size"):
        PhantomConfig(preset="brain-random", voxel_size=-1.0)


def test_cli_passes_preset_count_and_voxel_size():
    from difftract.cli import build_parser
    from difftract.commands.simulate import phantom_config

    args = build_parser().parse_args(["simulate", "out", "--preset", "brain-random", "--seed", "3",
                                      "--n-bundles", "9", "--voxel-size", "2.5"])
    config = phantom_config(args)
    assert (config.preset, config.seed, config.n_bundles, config.voxel_size) == ("brain-random", 3, 9, 2.5)
    default = phantom_config(build_parser().parse_args(["simulate", "out", "--preset", "brain-random"]))
    assert default.n_bundles is None and default.voxel_size is None
