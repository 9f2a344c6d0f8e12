"""The Tractometer on hand-built cases where every number is known, and on the phantom."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from difftract.errors import InputError
from difftract.eval.tractometer import format_table, load_scoring, score

SHAPE = (10, 5, 3)


def _write_config(tmp_path, with_gt=True):
    """Bundle A runs along x (y=2, z=1), head x<=1, tail x>=8; bundle B along y (x=5, z=1)."""
    gt = tmp_path / "gt"
    (gt / "rois").mkdir(parents=True)
    (gt / "masks").mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    masks = {name: np.zeros(SHAPE, np.uint8) for name in
             ("A_head", "A_tail", "B_head", "B_tail", "A", "B")}
    masks["A_head"][0:2, 2, 1] = 1
    masks["A_tail"][8:10, 2, 1] = 1
    masks["B_head"][5, 0, 1] = 1
    masks["B_tail"][5, 4, 1] = 1
    masks["A"][:, 2, 1] = 1
    masks["B"][5, :, 1] = 1
    for name, data in masks.items():
        folder = "masks" if len(name) == 1 else "rois"
        nib.save(nib.Nifti1Image(data, affine), gt / folder / f"{name}.nii.gz")
    config = {b: {"head": f"rois/{b}_head.nii.gz", "tail": f"rois/{b}_tail.nii.gz",
                  **({"gt_mask": f"masks/{b}.nii.gz"} if with_gt else {})} for b in ("A", "B")}
    (gt / "scoring.json").write_text(json.dumps(config))
    return tmp_path


def sl(*points):
    return np.array(points, dtype=np.float32)


STREAMLINES = [
    sl([0, 2, 1], [9, 2, 1]),                 # 0: A, two points only: crosses 8 voxels without a point in them
    sl([9, 2, 1], [0, 2, 1]),                 # 1: A reversed
    sl([1, 2, 1], [4, 3.2, 1], [8, 2, 1]),    # 2: A with a detour through y=3 (false positives)
    sl([5, -3, 1], [5, 4, 1]),                # 3: B, starts off the grid (nearest voxel is in B's head)
    sl([0, 2, 1], [5, 4, 1]),                 # 4: A head -> B tail: invalid connection
    sl([3, 1, 0], [4, 1, 0]),                 # 5: no ROI at all
    sl([0, 2, 1], [1, 2, 1]),                 # 6: both ends in A's head: no connection
    sl([5, 4, 1], [5.2, 4, 1], [8, 2, 1]),    # 7: B tail -> A tail: invalid connection
]


def test_every_number_of_a_hand_built_case(tmp_path):
    config = load_scoring(_write_config(tmp_path))
    r = score(STREAMLINES, config)
    seg = r.segmentation
    assert seg.vs["A"].tolist() == [0, 1, 2] and seg.vs["B"].tolist() == [3]
    assert [(k, v.tolist()) for k, v in seg.ic] == [("A_head_B_tail", [4]), ("A_tail_B_tail", [7])]
    assert seg.nc.tolist() == [5, 6]
    s = r.scores
    assert (s["total_streamlines"], s["VS"], s["IC"], s["NC"], s["VB"], s["IB"]) == (8, 4, 2, 2, 2, 2)
    assert s["VS_ratio"] == 0.5 and s["IC_ratio"] == 0.25 and s["NC_ratio"] == 0.25 and s["IS"] == 4
    a = s["bundle_wise"]["A"]
    # streamline 2 in corner coordinates: (1.5, 2.5) -> (4.5, 3.7) crosses y = 3 at x = 1.5 + 3 * 0.5/1.2
    # = 2.75, then (4.5, 3.7) -> (8.5, 2.5) crosses back at x = 4.5 + 4 * 0.7/1.2 = 6.83: voxels x = 2..6
    # of row y = 3 are false positives (row y = 2 is all covered by streamlines 0 and 1)
    fp = {(2, 3), (3, 3), (4, 3), (5, 3), (6, 3)}
    assert a["TP"] == 10 and a["FN"] == 0 and a["FP"] == len(fp)
    assert a["OL"] == 1.0 and a["OR_pct_vs"] == pytest.approx(len(fp) / (10 + len(fp)))
    assert a["OR_pct_gt"] == pytest.approx(len(fp) / 10)
    assert a["f1"] == pytest.approx(2 * 10 / (2 * 10 + len(fp)))
    b = s["bundle_wise"]["B"]
    assert (b["TP"], b["FP"], b["FN"], b["OL"], b["OR_pct_vs"], b["f1"]) == (5, 0, 0, 1.0, 0.0, 1.0)
    assert s["mean_OL"] == 1.0 and s["mean_f1"] == pytest.approx((a["f1"] + 1.0) / 2)
    assert s["bundle_wise"]["IB"]["A_head_B_tail"]["IC"] == 1
    assert "A" in format_table(r) and "IC A_head_B_tail" in format_table(r)


def test_missed_bundles_count_as_zero_and_missing_gt_masks_are_skipped(tmp_path):
    config = load_scoring(_write_config(tmp_path))
    r = score([STREAMLINES[0]], config)
    assert r["VB"] == 1 and r["bundle_wise"]["B"]["OL"] == 0 and r["mean_OL"] == 0.5
    no_gt = score([STREAMLINES[0]], load_scoring(_write_config(tmp_path / "nogt", with_gt=False)))
    assert "mean_OL" not in no_gt.scores and no_gt["bundle_wise"]["A"]["Scoring skipped"]
    empty = score([], config)
    assert empty["total_streamlines"] == 0 and empty["VS_ratio"] == 0 and empty["mean_OL"] == 0


def test_unique_mode_assigns_to_the_first_bundle(tmp_path):
    d = _write_config(tmp_path)
    cfg = json.loads((d / "gt" / "scoring.json").read_text())
    cfg["A2"] = cfg["A"]  # a duplicate bundle never gets streamlines: A comes first
    (d / "gt" / "scoring.json").write_text(json.dumps(cfg))
    r = score(STREAMLINES, load_scoring(d))
    assert r["bundle_wise"]["A2"]["VS"] == 0 and r["VS"] == 4


def test_configuration_errors_name_the_file(tmp_path):
    d = _write_config(tmp_path)
    path = d / "gt" / "scoring.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({"A": {**cfg["A"], "angle": 300}}))
    with pytest.raises(InputError, match="unsupported key"):
        load_scoring(d)
    path.write_text(json.dumps({"A": {"head": "rois/A_head.nii.gz"}}))
    with pytest.raises(InputError, match="both 'head' and 'tail'"):
        load_scoring(d)
    path.write_text(json.dumps({"A": {"head": "rois/nope.nii.gz", "tail": "rois/A_tail.nii.gz"}}))
    with pytest.raises(InputError, match="does not exist"):
        load_scoring(d)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_scoring(d)
    with pytest.raises(InputError, match="not found"):
        load_scoring(tmp_path / "nowhere")


def test_fibercup_ground_truth_scores_perfectly(phantom_dir):
    from difftract.io.tractogram import load_tractogram

    config = load_scoring(phantom_dir)
    r = score(load_tractogram(phantom_dir / "tractogram.trk").streamlines, config)
    assert r["VB"] == len(config.bundles) == 7
    assert r["VS_ratio"] >= 0.95 and r["mean_OL"] >= 0.8
    assert r["IC"] == 0 and r["mean_OR_vs"] < 0.01


def test_ic_pairs_with_the_same_name_all_count(tmp_path):
    """ROI files with the same name in different folders: scilpy keeps every pair's streamlines."""
    d = _write_config(tmp_path)
    gt = d / "gt"
    for b in ("A", "B"):
        (gt / b).mkdir()
        for end in ("head", "tail"):
            (gt / "rois" / f"{b}_{end}.nii.gz").rename(gt / b / f"{end}.nii.gz")
    cfg = {b: {"head": f"{b}/head.nii.gz", "tail": f"{b}/tail.nii.gz", "gt_mask": f"masks/{b}.nii.gz"}
           for b in ("A", "B")}
    (gt / "scoring.json").write_text(json.dumps(cfg))
    r = score(STREAMLINES, load_scoring(d))
    assert [name for name, _ in r.segmentation.ic] == ["head_tail", "tail_tail"]
    assert r["IC"] == 2 and r["IB"] == 2 and r["VS"] + r["IC"] + r["NC"] == len(STREAMLINES)


def test_paths_must_be_strings(tmp_path):
    d = _write_config(tmp_path)
    (d / "gt" / "scoring.json").write_text(json.dumps({"A": {"head": 3, "tail": "rois/A_tail.nii.gz"}}))
    with pytest.raises(InputError, match="must be a file path"):
        load_scoring(d)
    (d / "gt" / "scoring.json").write_text(json.dumps({"A": {"head": "rois", "tail": "rois/A_tail.nii.gz"}}))
    with pytest.raises(InputError, match="not a file"):
        load_scoring(d)
