"""benchmarks/_bundles.py: a row's F1 margin split into missed bundles and the bundles both rows found."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _bundles import bundle_entries, common_f1_margin, missed_bundles  # noqa: E402


def rule(**bundles):
    """A table row: ``name=(VS, F1)`` per bundle."""
    return {"bundle_wise": {name: {"VS": vs, "f1": f1} for name, (vs, f1) in bundles.items()}}


def test_bundle_entries_keep_vs_and_f1_and_drop_the_invalid_bundles():
    scores = {"bundle_wise": {"a": {"VS": 3, "f1": 0.5, "OL": 0.4}, "b": {"VS": 0, "f1": 0.0},
                              "c": {"VS": 2, "note": "Scoring skipped: no gt_mask"},
                              "IB": {"a_head_b_tail": {"IC": 2}}}}
    assert bundle_entries(scores) == {"a": {"VS": 3, "f1": 0.5}, "b": {"VS": 0, "f1": 0.0}}


def test_a_missed_bundle_leaves_the_common_margin_and_is_listed():
    # the row misses c (F1 0 in the usual mean: 0.6 against 0.7) but is ahead on a and b
    rules = {"dd": rule(a=(10, 0.9), b=(5, 0.9), c=(0, 0.0)),
             "det": rule(a=(10, 0.8), b=(4, 0.8), c=(0, 0.0)),
             "prob": rule(a=(10, 0.85), b=(5, 0.77), c=(1, 0.5))}
    tables = {"unseen": {"p1": rules}}
    out = common_f1_margin(tables, "dd", ["det", "prob"], ["unseen"])["unseen"]
    assert out["against"] == "prob"                      # +0.09 on {a, b} against det's +0.10
    assert out["row_f1"] == pytest.approx(0.9)
    assert out["margin"] == pytest.approx(0.09)
    missed = missed_bundles(rules, "dd", ["det", "prob"])
    assert missed["prob"] == {"row_missed": ["c"], "classical_missed": []}
    assert missed["det"] == {"row_missed": [], "classical_missed": []}


def test_the_common_margin_compares_each_classical_row_on_its_own_common_bundles():
    # det found only a, where it is far ahead; prob found a and b. Against det the common set is {a}, and the
    # smallest margin (-0.35 against det, +0.05 against prob) is kept
    tables = {"foreign": {"p1": {"dd": rule(a=(3, 0.6), b=(3, 0.9)),
                                 "det": rule(a=(3, 0.95), b=(0, 0.0)),
                                 "prob": rule(a=(3, 0.7), b=(3, 0.8))}}}
    out = common_f1_margin(tables, "dd", ["det", "prob"], ["foreign"])["foreign"]
    assert out["against"] == "det"
    assert out["margin"] == pytest.approx(0.6 - 0.95)


def test_phantoms_average_within_a_column_and_a_column_without_common_bundles_is_left_out():
    tables = {"unseen": {"p1": {"dd": rule(a=(1, 0.8)), "det": rule(a=(1, 0.6))},
                         "p2": {"dd": rule(a=(1, 0.4)), "det": rule(a=(1, 0.6))}},
              "brain": {"p3": {"dd": rule(a=(0, 0.0)), "det": rule(a=(2, 0.5))}}}
    out = common_f1_margin(tables, "dd", ["det"], ["unseen", "brain"])
    assert set(out) == {"unseen"}
    assert out["unseen"]["margin"] == pytest.approx(0.0)
    assert out["unseen"]["row_f1"] == pytest.approx(0.6)
