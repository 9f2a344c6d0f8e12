"""The fODF guide: DDTracking's direction moved towards the nearest CSD fODF peak."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from difftract.errors import ConfigError
from difftract.models.ddtracking.getter import DDTrackingGetter
from difftract.models.ddtracking.guide import FodfGuide, GuideConfig
from difftract.reconst.peaks import default_sphere
from difftract.reconst.sh import sh_basis
from difftract.tracking.sh_field import OrientationTable, SHField
from difftract.tracking.stopping import BinaryCriterion
from difftract.tracking.tracker import Tracker, TrackingParams

from .test_ddtracking_getter import model

VERTICES = np.asarray(default_sphere().vertices, dtype=np.float64)
U1 = VERTICES[10]    # a fibre direction on a sphere vertex, so a peak lands on it exactly


def _second_fibre() -> np.ndarray:
    """The vertex nearest 70 degrees from U1 (a crossing the peak search resolves)."""
    angle = np.degrees(np.arccos(np.clip(np.abs(VERTICES @ U1), 0, 1)))
    return VERTICES[np.argmin(np.abs(angle - 70.0))]


def fodf_field(directions, shape=(5, 5, 5), lmax=8, sizes=None, sharpness=40.0) -> SHField:
    """A constant field whose fODF is a sum of lobes along ``directions`` (least-squares SH fit), of heights
    ``sizes`` (all 1 by default); a small ``sharpness`` makes one lobe's basin the whole sphere."""
    dense = np.concatenate([VERTICES, -VERTICES])
    sizes = [1.0] * len(directions) if sizes is None else sizes
    amplitude = sum(a * np.exp(-sharpness * (1.0 - (dense @ u) ** 2)) for a, u in zip(sizes, directions))
    B, _ = sh_basis(dense, lmax, False)
    coeffs = np.linalg.lstsq(B, amplitude, rcond=None)[0]
    return SHField(np.broadcast_to(coeffs, (*shape, len(coeffs))).copy(), legacy=False)


def turned(u: np.ndarray, degrees: float) -> np.ndarray:
    """``u`` turned by ``degrees`` about an axis perpendicular to it."""
    axis = np.cross(u, [0.0, 0.0, 1.0] if abs(u[2]) < 0.9 else [1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    t = np.radians(degrees)
    return u * np.cos(t) + np.cross(axis, u) * np.sin(t)


def _dirs(*vectors) -> torch.Tensor:
    return torch.as_tensor(np.stack(vectors), dtype=torch.float64)


@pytest.fixture(scope="module")
def crossing():
    return fodf_field([U1, _second_fibre()])


def test_the_peaks_of_the_field_are_its_fibres(crossing):
    peaks, present = crossing.peaks(torch.full((1, 3), 2.0, dtype=torch.float64))
    found = peaks[0][present[0]].numpy()
    assert len(found) == 2
    for u in (U1, _second_fibre()):
        assert np.max(np.abs(found @ u)) > 1 - 1e-9


def test_weight_one_snaps_to_the_peak_the_direction_is_nearest_with_its_sign(crossing):
    guide = FodfGuide(crossing, GuideConfig(weight=1.0, max_angle=30.0))
    u2 = _second_fibre()
    points = torch.full((3, 3), 2.0, dtype=torch.float64)
    dirs = _dirs(turned(U1, 12), -turned(U1, 20), turned(u2, 15))    # the network picks the peak and the sign
    out = guide(points, dirs).numpy()
    np.testing.assert_allclose(out, np.stack([U1, -U1, u2]), atol=1e-12)


def test_a_weight_moves_part_of_the_way_and_far_or_absent_peaks_leave_it(crossing):
    w = 0.3
    guide = FodfGuide(crossing, GuideConfig(weight=w, max_angle=30.0))
    d = turned(U1, 20)
    out = guide(torch.full((1, 3), 2.0, dtype=torch.float64), _dirs(d))[0].numpy()
    expected = (1 - w) * d + w * U1
    np.testing.assert_allclose(out, expected / np.linalg.norm(expected), atol=1e-12)
    assert 0 < np.degrees(np.arccos(out @ U1)) < 20                   # between the two
    far = turned(U1, 35.0)                                               # > 30 degrees from U1, far from the other
    assert min(np.degrees(np.arccos(np.abs(far @ u))) for u in (U1, _second_fibre())) > 30
    np.testing.assert_allclose(guide(torch.full((1, 3), 2.0, dtype=torch.float64), _dirs(far))[0].numpy(), far)
    empty = SHField(np.zeros((5, 5, 5, 45)), legacy=False)                # no fODF: no peak, no change
    d = F.normalize(torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = FodfGuide(empty, GuideConfig(weight=1.0))(torch.full((6, 3), 2.0, dtype=torch.float64), d)
    assert torch.equal(out, d)


def _around(u: np.ndarray, max_degrees: float, n: int, rng) -> list[np.ndarray]:
    """``n`` directions within ``max_degrees`` of ``u``, turned about random axes, half of them flipped."""
    out = []
    for i in range(n):
        axis = np.cross(u, rng.normal(size=3))
        axis /= np.linalg.norm(axis)
        t = np.radians(rng.uniform(0, max_degrees))
        out.append((-1) ** i * (u * np.cos(t) + np.cross(axis, u) * np.sin(t)))
    return out


def test_the_climb_finds_the_peak_the_exhaustive_search_finds(crossing):
    """From within 25 degrees of either fibre of a 70-degree crossing, the climb ends on the fibre
    :meth:`closest_peak` gives, with the direction's sign; outside the grid there is no peak."""
    rng = np.random.default_rng(4)
    dirs = _dirs(*_around(U1, 25, 30, rng), *_around(_second_fibre(), 25, 30, rng))
    points = torch.full((60, 3), 2.0, dtype=torch.float64)
    climbed, climbed_cos = crossing.climbed_peak(points, dirs)
    closest, closest_cos = crossing.closest_peak(points, dirs)
    torch.testing.assert_close(climbed, closest, rtol=0, atol=1e-12)
    torch.testing.assert_close(climbed_cos, closest_cos, rtol=0, atol=1e-12)
    assert torch.all(climbed_cos > np.cos(np.radians(25.5)))
    _, off_grid = crossing.climbed_peak(torch.full((1, 3), -5.0, dtype=torch.float64), dirs[:1])
    assert off_grid.item() == -1.0


def test_a_climb_to_a_small_lobe_or_one_cut_short_is_no_peak():
    """A lobe under half the largest is not a peak (as in :meth:`peaks`), and the guide leaves a direction in its basin.
    A climb out of hops is no peak."""
    u2 = _second_fibre()
    field = fodf_field([U1, u2], sizes=[1.0, 0.3])
    points = torch.full((1, 3), 2.0, dtype=torch.float64)
    d = _dirs(turned(u2, 10))
    assert field.climbed_peak(points, d)[1].item() == -1.0
    assert field.climbed_peak(points, d, relative_peak_threshold=0.2)[1].item() > np.cos(np.radians(10.5))
    assert torch.equal(FodfGuide(field, GuideConfig(weight=1.0))(points, d), d)
    near = _dirs(turned(U1, 20))
    assert field.climbed_peak(points, near)[1].item() > 0.9
    assert field.climbed_peak(points, near, max_hops=0)[1].item() == -1.0


def test_the_orientation_table_reads_the_nearest_vertex_or_a_neighbour():
    """Vertices read themselves (either sign); any direction reads a vertex at most about one bin diagonal
    (1.4 degrees) further than the nearest, and the nearest at most bins' edges."""
    vertices = torch.as_tensor(VERTICES)
    table = OrientationTable(vertices)
    index = torch.arange(len(vertices))
    assert torch.equal(table.nearest(vertices), index) and torch.equal(table.nearest(-vertices), index)
    dirs = F.normalize(torch.randn(20_000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)), dim=-1)
    read, best = table.nearest(dirs), (dirs @ vertices.T).abs().argmax(dim=1)
    angle = lambda i: torch.rad2deg(torch.acos((dirs * vertices[i]).sum(dim=-1).abs().clamp(max=1.0)))
    assert float((angle(read) - angle(best)).max()) < 1.45
    assert float((read == best).double().mean()) > 0.9


def test_weight_zero_is_the_network_alone(crossing):
    d = F.normalize(torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), dim=-1)
    out = FodfGuide(crossing, GuideConfig(weight=0.0))(torch.full((20, 3), 2.0, dtype=torch.float64), d)
    torch.testing.assert_close(out, d, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kw, message", [({"weight": 1.5}, "--fodf-guide must be in [0, 1]"),
                                         ({"weight": -0.1}, "--fodf-guide must be in [0, 1]"),
                                         ({"weight": float("nan")}, "--fodf-guide must be in [0, 1]"),
                                         ({"weight": 0.3, "max_angle": 0.0}, "angle"),
                                         ({"weight": 0.3, "relative_peak_threshold": 1.0}, "peak threshold")])
def test_bad_configs_are_refused(kw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        GuideConfig(**kw)


def test_the_guided_getter_steps_along_the_fodf_and_tracks(crossing):
    """With weight 1 every step the network takes within 30 degrees of a peak is that peak; the GRU reads it."""
    sh = np.zeros((5, 5, 5, 28), np.float32)
    sh[..., 0] = 1.0
    plain = DDTrackingGetter(model(), sh, max_angle=90)
    guided = DDTrackingGetter(model(), sh, max_angle=90, guide=FodfGuide(crossing, GuideConfig(weight=1.0)))
    points = torch.full((8, 3), 2.0)
    prev = F.normalize(torch.randn(8, 3, generator=torch.Generator().manual_seed(2)), dim=-1)
    d0, _, _ = plain.directions(points, prev, plain.init(points, prev))
    d1, _, _ = guided.directions(points, prev, guided.init(points, prev))
    peaks = torch.as_tensor(np.stack([U1, _second_fibre()]), dtype=torch.float32)
    angle = torch.rad2deg(torch.acos((d0 @ peaks.T).abs().amax(dim=1).clamp(max=1)))
    near, far = angle < 28, angle > 32
    assert near.sum() >= 2 and far.sum() >= 2                  # both cases are exercised
    assert torch.all((d1[near] @ peaks.T).abs().amax(dim=1) > 1 - 1e-5)
    assert torch.allclose(d1[far], d0[far])
    tracker = Tracker(guided, BinaryCriterion(np.ones((5, 5, 5), bool)), (2.0, 2.0, 2.0),
                      TrackingParams(step_mm=1.0, min_len_mm=0.0, max_len_mm=20.0))
    lines = [s for chunk in tracker.track(torch.full((4, 3), 2.0, dtype=torch.float64)) for s in chunk.split()]
    assert len(lines) == 4 and guided.bytes_per_seed(4) > plain.bytes_per_seed(4)


def test_a_guide_on_another_grid_is_refused(crossing):
    with pytest.raises(ConfigError, match="guide's fODF grid"):
        DDTrackingGetter(model(), np.zeros((4, 4, 4, 28), np.float32), guide=FodfGuide(crossing, GuideConfig(0.3)))


def test_with_anisotropic_voxels_the_guide_moves_the_physical_direction():
    """The tracker's directions and the fODF's peaks are both physical directions along the array axes: with
    weight 1 a guided step is the physical peak, whatever the voxel shape (the network's voxel-frame output is
    converted before the guide)."""
    field = fodf_field([U1], sharpness=2.0)       # one basin: every direction climbs to U1
    sh = np.zeros((5, 5, 5, 28), np.float32)
    sh[..., 0] = 1.0
    guided = DDTrackingGetter(model(), sh, max_angle=90, voxel_sizes=(1.0, 1.0, 2.0),
                              guide=FodfGuide(field, GuideConfig(weight=1.0, max_angle=90.0)))
    points = torch.full((6, 3), 2.0)
    prev = F.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    dirs, _, _ = guided.directions(points, prev, guided.init(points, prev))
    np.testing.assert_allclose(np.abs(dirs.numpy() @ U1), 1.0, atol=1e-5)


def test_the_shipped_networks_have_their_validated_guide():
    """Each shipped network's weight (benchmarks/tune_fodf_guide.py) is keyed by its file's checksum: rebuilt
    weights fail here until the script is rerun on them. Other weights track unguided unless they carry one."""
    from difftract.models.ddtracking.defaults import SHIPPED_MODELS, VALIDATED_GUIDES, TrackingDefaults
    from difftract.models.ddtracking.getter import load_ddtracking
    from difftract.weights import expected_sums

    sums = expected_sums()
    assert set(VALIDATED_GUIDES) == {sums[f"{name}.pt"] for name in SHIPPED_MODELS.values()}
    guides = {m: TrackingDefaults.from_meta(load_ddtracking(model=m)[1]).fodf_guide for m in SHIPPED_MODELS}
    assert guides == {"full": 0.3, "fast": 0.7}
    assert TrackingDefaults.from_meta({"sha256": "0" * 64}).fodf_guide == 0.0
    assert TrackingDefaults.from_meta({"sha256": "0" * 64, "fodf_guide": 0.4}).fodf_guide == 0.4
    with pytest.raises(ConfigError, match="invalid DDTracking tracking defaults"):
        TrackingDefaults.from_meta({"fodf_guide": 1.5})
