"""``difftract cluster``: DIPY QuickBundles, the adjusted Rand index, outputs and refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from difftract.errors import ConfigError
from difftract.eval.clusters import adjusted_rand_index, agreement, contingency, quickbundles, visiting_order
from difftract.io.tractogram import Tractogram, load_tractogram, save_tractogram


def straight_bundle(n, offset, rng, length=40.0, points=30):
    """``n`` straight streamlines along y, within 1 mm of ``offset`` (x, z)."""
    y = np.linspace(0.0, length, points)
    out = []
    for _ in range(n):
        dx, dz = rng.uniform(-1, 1, 2)
        out.append(np.c_[np.full(points, offset[0] + dx), y, np.full(points, offset[1] + dz)])
    return out


def test_ari_matches_a_hand_computed_value():
    # a = [0,0,0,1,1,1], b = [0,0,1,1,2,2]: contingency [[2,1,0],[0,1,2]]
    # index = C(2,2)+C(2,2) = 2; rows: 2*C(3,2) = 6; cols: 3*C(2,2) = 3; total C(6,2) = 15
    # expected = 6*3/15 = 1.2; max = 4.5; ARI = (2-1.2)/(4.5-1.2) = 0.8/3.3
    a, b = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(contingency(a, b), [[2, 1, 0], [0, 1, 2]])
    assert adjusted_rand_index(a, b) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(b, a) == pytest.approx(0.8 / 3.3)          # symmetric


def _ari_by_pairs(a, b):
    """The adjusted Rand index counted pair by pair (the definition, O(n^2))."""
    n = len(a)
    i, j = np.triu_indices(n, 1)
    same_a, same_b = a[i] == a[j], b[i] == b[j]
    both, pa, pb, total = np.sum(same_a & same_b), same_a.sum(), same_b.sum(), len(i)
    expected = pa * pb / total
    return (both - expected) / ((pa + pb) / 2 - expected)


def test_ari_matches_pair_counting():
    rng = np.random.default_rng(2)
    for n, ka, kb in ((40, 3, 3), (120, 7, 4), (200, 2, 9)):
        a, b = rng.integers(0, ka, n), rng.integers(0, kb, n)
        b[: n // 2] = a[: n // 2]
        assert adjusted_rand_index(a, b) == pytest.approx(_ari_by_pairs(a, b))


def test_ari_limits():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 9, 9]) == 1.0          # same partition, other names
    assert adjusted_rand_index([0, 0, 0, 0], [1, 1, 1, 1]) == 1.0          # trivial and equal (sklearn: 1)
    # a perfectly "crossed" partition is worse than chance: hand value -0.5
    # index 0; rows 2*C(2,2)=2, cols 2; total 6; expected 4/6; max 2 -> (0-2/3)/(2-2/3) = -0.5
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    rng = np.random.default_rng(0)
    assert abs(adjusted_rand_index(rng.integers(0, 5, 5000), rng.integers(0, 5, 5000))) < 0.01


def test_ari_agrees_with_sklearn_when_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.integers(0, 6, 300), rng.integers(0, 4, 300)
        b[:150] = a[:150] % 4
        assert adjusted_rand_index(a, b) == pytest.approx(metrics.adjusted_rand_score(a, b))


def test_two_far_apart_bundles_give_two_clusters_and_ari_one():
    rng = np.random.default_rng(0)
    streamlines = straight_bundle(30, (0, 0), rng) + straight_bundle(20, (40, 0), rng)
    truth = np.r_[np.zeros(30, int), np.ones(20, int)]
    order = rng.permutation(50)                       # interleaved in the file
    streamlines, truth = [streamlines[i] for i in order], truth[order]
    # flipped streamlines belong to the same cluster (QuickBundles' MDF distance)
    streamlines = [s[::-1] if i % 3 == 0 else s for i, s in enumerate(streamlines)]
    for ordering in ("file", "random", "length"):
        result = quickbundles(streamlines, threshold=10.0, ordering=ordering, seed=3)
        assert len(result) == 2 and result.sizes == [30, 20]
        assert set(result.labels[truth == 0]) == {0} and set(result.labels[truth == 1]) == {1}
        assert agreement(result, truth)["ari"] == 1.0
        np.testing.assert_allclose(result.centroids[1][:, 0].mean(), 40, atol=1)   # centroid of the far bundle
        assert result.centroids[0].shape == (12, 3)


def test_threshold_min_size_and_ordering():
    rng = np.random.default_rng(0)
    streamlines = straight_bundle(30, (0, 0), rng) + straight_bundle(20, (40, 0), rng) + \
        straight_bundle(2, (0, 40), rng)
    assert len(quickbundles(streamlines, threshold=100.0)) == 1
    result = quickbundles(streamlines, threshold=10.0, min_size=5, nb_points=6)
    assert len(result) == 2 and result.n_clusters_before_min_size == 3
    np.testing.assert_array_equal(result.other, [50, 51])
    assert (result.labels[50:] == -1).all() and result.centroids[0].shape == (6, 3)
    truth = np.r_[np.zeros(30, int), np.ones(20, int), -np.ones(2, int)]   # the last two in no bundle
    score = agreement(result, truth, ["a", "b"])
    assert score["ari"] == 1.0 and score["streamlines_compared"] == 50
    assert score["bundles"]["b"] == {"streamlines": 20, "clusters": 1, "main_cluster": 1, "main_cluster_share": 1.0}
    np.testing.assert_array_equal(visiting_order(streamlines, "random", 4), visiting_order(streamlines, "random", 4))
    assert visiting_order([np.zeros((2, 3)), np.c_[np.arange(5.0), np.zeros(5), np.zeros(5)]], "length")[0] == 1
    with pytest.raises(ConfigError):
        quickbundles(streamlines, threshold=0)
    with pytest.raises(ConfigError):
        quickbundles(streamlines, ordering="alphabetical")
    with pytest.raises(ConfigError):
        quickbundles([np.zeros((1, 3))])


# ------------------------------------------------------------------------------------- CLI
def test_cluster_ground_truth_of_the_phantom(cli, phantom_dir, tmp_path):
    out = tmp_path / "c_gt"
    res = cli("cluster", phantom_dir / "tractogram.trk", "--out", out, "--phantom", phantom_dir)
    assert res.returncode == 0, res.stderr
    assert "7 clusters" in res.stdout and "ARI against the true bundles" in res.stdout
    record = json.loads((out / "clusters.json").read_text())
    assert record["n_clusters"] == 7 and record["sizes"] == [200] * 7 and record["threshold_mm"] == 10.0
    assert record["agreement"]["ari"] == pytest.approx(1.0)
    assert record["agreement"]["streamlines_compared"] == 1400
    assert record["agreement"]["stored_label_is_tractometer_bundle"] == 1.0
    assert record["provenance"]["command"] == "cluster" and record["nb_points"] == 12
    assert sorted(sum(record["indices"], [])) == list(range(1400))
    first = load_tractogram(out / "cluster_000.trk")
    assert len(first) == 200 and "source_index" in first.data_per_streamline
    np.testing.assert_array_equal(first.data_per_streamline["source_index"], record["indices"][0])
    centroids = load_tractogram(out / "centroids.trk")
    assert len(centroids) == 7 and all(len(c) == 12 for c in centroids.streamlines)
    rows = list(csv.reader((out / "clusters.csv").open()))
    assert rows[0] == ["streamline", "cluster", "bundle"] and len(rows) == 1401
    assert (out / "clusters.png").stat().st_size > 20_000
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())            # no staging left

    again = cli("cluster", phantom_dir / "tractogram.trk", "--out", out)
    assert again.returncode == 2 and "exists" in again.stderr and again.stderr.count("\n") == 1
    forced = cli("-q", "cluster", phantom_dir / "tractogram.trk", "--out", out, "--force", "--threshold", "100",
                 "--format", "tck")
    assert forced.returncode == 0, forced.stderr
    record = json.loads((out / "clusters.json").read_text())
    assert record["n_clusters"] == 1 and (out / "cluster_000.tck").exists() and (out / "centroids.tck").exists()
    assert not (out / "cluster_001.trk").exists()


def test_cluster_tracked_tractogram_uses_the_tractometer(cli, phantom_dir, tmp_path):
    """Without stored labels, valid streamlines are compared; no-connection ones are counted apart."""
    gt = load_tractogram(phantom_dir / "tractogram.trk")
    rng = np.random.default_rng(0)
    junk = [np.c_[np.linspace(20, 30, 10), np.full(10, 20.0 + rng.uniform(0, 3)), np.full(10, 5.0)]
            for _ in range(30)]                                             # short, in no ROI
    tracked = Tractogram(list(gt.streamlines) + junk, gt.affine, gt.dimensions)
    path = tmp_path / "tracked.trx"
    save_tractogram(tracked, path)
    out = tmp_path / "c"
    res = cli("cluster", path, "--out", out, "--phantom", phantom_dir, "--min-size", "40")
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "clusters.json").read_text())
    agreement_ = record["agreement"]
    assert agreement_["tractometer"]["VS"] == 1400 and agreement_["tractometer"]["NC"] == 30
    assert "Tractometer" in agreement_["source"] and agreement_["streamlines_compared"] == 1400
    assert agreement_["ari"] == pytest.approx(1.0)
    assert record["n_clusters"] == 7 and record["other_size"] == 30 and (out / "other.trx").exists()
    assert "VS 1400, IC 0, NC 30" in res.stdout


def test_cluster_refusals(cli, phantom_dir, tmp_path):
    missing = cli("cluster", tmp_path / "nope.trk", "--out", tmp_path / "c")
    assert missing.returncode == 2 and "nope.trk" in missing.stderr and missing.stderr.count("\n") == 1
    assert not (tmp_path / "c").exists()
    tck = tmp_path / "t.tck"
    gt = load_tractogram(phantom_dir / "tractogram.trk")
    save_tractogram(Tractogram(gt.streamlines, gt.affine, gt.dimensions), tck)
    no_grid = cli("cluster", tck, "--out", tmp_path / "c")
    assert no_grid.returncode == 2 and "reference" in no_grid.stderr and no_grid.stderr.count("\n") == 1
    bad = cli("cluster", phantom_dir / "tractogram.trk", "--out", tmp_path / "c", "--threshold", "-1")
    assert bad.returncode == 2 and "threshold" in bad.stderr and not (tmp_path / "c").exists()
    empty = tmp_path / "empty.trk"
    save_tractogram(Tractogram([], np.eye(4), (4, 4, 4)), empty)
    res = cli("cluster", empty, "--out", tmp_path / "c")
    assert res.returncode == 2 and "no streamlines" in res.stderr
    elsewhere = tmp_path / "other_grid.trk"
    save_tractogram(Tractogram([np.zeros((3, 3)) + [[0, 0, 0], [1, 0, 0], [2, 0, 0]]], np.eye(4), (4, 4, 4)),
                    elsewhere)
    res = cli("cluster", elsewhere, "--out", tmp_path / "c", "--phantom", phantom_dir)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and not (tmp_path / "c").exists()


def test_cluster_through_the_console_script_on_a_crossing(cli, cli_script, cli_scripts, tmp_path):
    """The installed script on a small 90-degree crossing: a .tck read on the phantom's grid, then refusals."""
    ph = tmp_path / "ph"
    res = cli("-q", "simulate", ph, "--preset", "crossing", "--streamlines-per-bundle", "20", "--ndirs", "30")
    assert res.returncode == 0, res.stderr
    gt = load_tractogram(ph / "tractogram.trk")
    save_tractogram(Tractogram(gt.streamlines, gt.affine, gt.dimensions), tmp_path / "t.tck")   # no labels
    # the missing input is refused beside the run (it writes nothing, and nothing it reads is written)
    res, missing = cli_scripts(["cluster", tmp_path / "t.tck", "--out", tmp_path / "c", "--phantom", ph,
                                "--format", "trx"],
                               ["cluster", tmp_path / "nope.trk", "--out", tmp_path / "d"])
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "c" / "clusters.json").read_text())
    assert record["n_clusters"] == 2 and record["agreement"]["ari"] == 1.0
    assert record["agreement"]["tractometer"] == {"VS": 40, "IC": 0, "NC": 0}
    assert (tmp_path / "c" / "cluster_001.trx").is_file()
    exists = cli_script("cluster", tmp_path / "t.tck", "--out", tmp_path / "c", "--phantom", ph)
    for res, expect in ((missing, "nope.trk"), (exists, "--force")):
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode == 2 and len(lines) == 1 and expect in lines[0], res.stderr
    assert not (tmp_path / "d").exists()
