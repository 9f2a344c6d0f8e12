"""benchmarks/bench_ddtracking.py: issue 19's figures, for the target row and printed for every learned row."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_ddtracking import TRUE_PEAKS_DD, measure_targets, target_figures  # noqa: E402


def row(vc, f1, nc=0.2, ib=10, vb=1.0):
    return {"VS_ratio": vc, "mean_f1": f1, "NC_ratio": nc, "IB": ib, "VB_fraction": vb}


COLUMNS = {   # det leads F1 in the first column, prob in the second: the per-column best differs from the best row
    "unseen": {"det": row(0.5, 0.8, ib=12), "prob": row(0.3, 0.7, ib=20), TRUE_PEAKS_DD: row(0.9, 0.95, nc=0.25),
               "ddtracking a": row(0.6, 0.75, nc=0.1, ib=11, vb=0.5), "ddtracking b": row(0.4, 0.9, ib=14)},
    "foreign": {"det": row(0.4, 0.6, ib=8), "prob": row(0.35, 0.9, ib=9), TRUE_PEAKS_DD: row(0.8, 0.85, nc=0.35),
                "ddtracking a": row(0.5, 0.8, nc=0.3, ib=7), "ddtracking b": row(0.45, 0.85, ib=8)},
}


def test_target_figures_take_each_columns_best_classical_row_and_the_one_best_row():
    f = target_figures(COLUMNS, "ddtracking a", ["det", "prob"], ["unseen", "foreign"])
    assert f["vc_margin_tests"] == pytest.approx(((0.6 - 0.5) + (0.5 - 0.4)) / 2)
    assert f["f1_margin_tests"] == pytest.approx(((0.75 - 0.8) + (0.8 - 0.9)) / 2)
    # the one classical row with the best mean F1 is prob (0.8 against det's 0.7)
    assert f["f1_margin_best_row_tests"] == pytest.approx((0.75 + 0.8) / 2 - 0.8)
    assert f["vc_margin_best_row_tests"] == pytest.approx((0.6 + 0.5) / 2 - 0.45)
    assert f["nc_tests"] == pytest.approx(0.2) and f["ib_over_det_tests"] == pytest.approx(-1.0)
    assert f["vb_fraction_tests"] == pytest.approx(0.75)


class _Check:
    def __init__(self):
        self.measured, self.unmeasured_names = {}, []

    def measure(self, name, value):
        self.measured[name] = value

    def unmeasured(self, name, why):
        self.unmeasured_names.append(name)


def test_measure_targets_reads_the_target_row_and_prints_every_learned_row(capsys):
    check = _Check()
    measure_targets(check, COLUMNS, "ddtracking b", no_dipy=True)
    assert check.measured["f1_margin_tests"] == pytest.approx(((0.9 - 0.8) + (0.85 - 0.9)) / 2)
    assert check.measured["ib_over_det_tests"] == pytest.approx(1.0)
    assert check.measured["nc_true_peaks_tests"] == pytest.approx(0.3)
    assert check.measured["f1_true_peaks_tests"] == pytest.approx(0.9)
    lines = capsys.readouterr().out.splitlines()
    printed = {line.split()[1]: line.split()[2:] for line in lines if line.strip().startswith("ddtracking")}
    assert printed["a"] == ["+0.1000", "-0.0750", "0.2000", "-1.00"]
    assert printed["b"] == ["-0.0250", "+0.0250", "0.2000", "+1.00"]
    measure_targets(check := _Check(), {"seen": COLUMNS["unseen"]}, "ddtracking b", no_dipy=True)
    assert "f1_margin_tests" in check.unmeasured_names and not check.measured


def test_the_moved_fibercup_is_a_test_column_and_the_earlier_columns_are_printed_apart(capsys):
    moved = {"det": row(0.5, 0.6, ib=4), "prob": row(0.4, 0.7, ib=6), TRUE_PEAKS_DD: row(0.9, 0.9, nc=0.2),
             "ddtracking a": row(0.7, 0.9, nc=0.1, ib=3), "ddtracking b": row(0.5, 0.6, ib=4)}
    check = _Check()
    measure_targets(check, {**COLUMNS, "moved": moved}, "ddtracking a", no_dipy=True)
    # means over unseen, moved and foreign (the test columns present)
    assert check.measured["f1_margin_tests"] == pytest.approx(((0.75 - 0.8) + (0.9 - 0.7) + (0.8 - 0.9)) / 3)
    out = capsys.readouterr().out
    tables = out.split("Issue 19's figures per learned row")[1:]
    assert len(tables) == 2 and "unseen, moved, foreign" in tables[0] and "unseen, foreign;" in tables[1]
    earlier = {line.split()[1]: line.split()[2:] for line in tables[1].splitlines()
               if line.strip().startswith("ddtracking")}
    assert earlier["a"][1] == "-0.0750"   # as without the moved column
