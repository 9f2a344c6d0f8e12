"""benchmarks/_check.py: declared targets, --check exit codes, unmeasured references, the JSON line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_check", BENCH / "_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod               # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


C = _load()
TARGETS = [C.Target("speed_ratio", ">=", 3.0, "README"),
           C.Target("max_diff", "<=", 1e-6, "tests"),
           C.Target("soft_ratio", ">=", 1.0, "README", hard=False),
           C.Target("fa", "range", (0.6, 0.85), "tests"),
           C.Target("repeats", "==", True, "README")]


def run(argv, record, capsys):
    """Parse argv as a benchmark would, record figures, finish; return (exit code, stdout lines, JSON)."""
    import argparse

    _, check = C.parse_args(argparse.ArgumentParser(), "bench_demo", TARGETS, argv)
    record(check)
    with pytest.raises(SystemExit) as exc:
        check.finish({"figure": 1.5})
    lines = capsys.readouterr().out.strip().splitlines()
    return exc.value.code, lines, json.loads(lines[-1])


def all_met(check):
    check.measure("speed_ratio", 3.5)
    check.measure("max_diff", 1e-9)
    check.measure("soft_ratio", 0.5)          # a soft miss does not fail
    check.measure("fa", 0.7)
    check.measure("repeats", True)


def test_met_targets_exit_0_and_the_last_line_is_json_with_the_targets(capsys):
    code, lines, out = run(["--check"], all_met, capsys)
    assert code == 0
    assert out["figure"] == 1.5 and out["benchmark"] == "bench_demo"
    assert out["check"] == {"enabled": True, "passed": True, "failed": [], "overridden": []}
    status = {t["name"]: t["status"] for t in out["targets"]}
    assert status == {"speed_ratio": "pass", "max_diff": "pass", "soft_ratio": "miss", "fa": "pass", "repeats": "pass"}
    t = out["targets"][0]
    assert (t["op"], t["threshold"], t["hard"], t["value"], t["source"]) == (">=", 3.0, True, 3.5, "README")
    assert any("MISS (soft)" in line and "soft_ratio" in line for line in lines)
    assert any(line.strip().startswith("PASS") and "speed_ratio" in line for line in lines)
    assert lines[-2] == "check: 4 pass, 1 miss; no failures (1 soft missed)"


def test_a_missed_hard_target_fails_only_under_check(capsys):
    def record(check):
        check.measure("speed_ratio", 2.0)
        check.measure("max_diff", 1e-9)
        check.measure("soft_ratio", 2.0)
        check.measure("fa", 0.9)              # out of its range
        check.measure("repeats", True)

    code, lines, out = run(["--check"], record, capsys)
    assert code == 1 and out["check"]["failed"] == ["speed_ratio", "fa"] and not out["check"]["passed"]
    assert any(line.strip().startswith("MISS") and "speed_ratio" in line for line in lines)
    code, _, out = run([], record, capsys)
    assert code == 0 and out["check"]["enabled"] is False and out["check"]["failed"] == ["speed_ratio", "fa"]


def test_an_unmeasured_reference_is_a_miss_under_check_with_its_reason(capsys):
    def record(check):
        check.unmeasured("speed_ratio", "DIPY reference failed: ImportError: no dipy")
        check.measure("max_diff", 1e-9)
        with check.measuring("soft_ratio", what="the soft row"):
            raise RuntimeError("boom")
        check.measure("fa", float("nan"))
        # "repeats" is never recorded: a dropped row is unmeasured, not silently absent

    code, lines, out = run(["--check"], record, capsys)
    assert code == 1
    by_name = {t["name"]: t for t in out["targets"]}
    assert {n for n, t in by_name.items() if t["status"] == "unmeasured"} == {"speed_ratio", "soft_ratio", "fa",
                                                                              "repeats"}
    assert out["check"]["failed"] == ["speed_ratio", "soft_ratio", "fa", "repeats"]   # soft too: it was not measured
    assert "ImportError: no dipy" in by_name["speed_ratio"]["reason"]
    assert "RuntimeError: boom" in by_name["soft_ratio"]["reason"]
    assert "did not reach it" in by_name["repeats"]["reason"]
    text = "\n".join(lines[:-1])
    assert "UNMEASURED" in text and "no dipy" in text
    assert run([], record, capsys)[0] == 0     # without --check it still reports and exits 0


def test_skipped_targets_do_not_fail(capsys):
    def record(check):
        check.measure("speed_ratio", 4.0)
        check.measure("max_diff", 0.0)
        check.skip("soft_ratio", "--quick")
        check.skip("fa", "--quick")
        check.measure("repeats", True)

    code, _, out = run(["--check"], record, capsys)
    assert code == 0 and [t["status"] for t in out["targets"]].count("skipped") == 2


def test_target_overrides(capsys):
    code, _, out = run(["--check", "--target", "speed_ratio=1e9"], all_met, capsys)
    assert code == 1 and out["check"]["failed"] == ["speed_ratio"] and out["check"]["overridden"] == ["speed_ratio"]
    assert out["targets"][0]["threshold"] == 1e9 and "override" in out["targets"][0]["source"]
    # an override makes a soft target hard; ranges take LO,HI and flags true/false
    code, _, out = run(["--check", "--target", "soft_ratio=0.1", "--target", "fa=0.8,0.9",
                        "--target", "repeats=false"], all_met, capsys)
    assert code == 1 and out["check"]["failed"] == ["fa", "repeats"]
    assert out["targets"][2]["hard"] is True and out["targets"][3]["threshold"] == [0.8, 0.9]
    for bad in (["--target", "nope=1"], ["--target", "speed_ratio"], ["--target", "repeats=maybe"]):
        with pytest.raises(SystemExit) as exc:
            run(bad, all_met, capsys)
        assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_help_lists_the_targets(capsys):
    import argparse

    with pytest.raises(SystemExit):
        C.parse_args(argparse.ArgumentParser(), "bench_demo", TARGETS, ["--help"])
    out = capsys.readouterr().out
    assert "--target NAME=VALUE" in out and "speed_ratio" in out and "in [0.6, 0.85]" in out and "soft" in out


def test_every_benchmark_declares_targets_and_ends_through_the_check():
    scripts = sorted(BENCH.glob("bench_*.py"))
    assert scripts
    for path in scripts:
        text = path.read_text()
        assert "TARGETS" in text and "parse_args(" in text and "check.finish(" in text, path.name


@pytest.mark.slow
def test_a_real_benchmark_with_an_impossible_target_exits_non_zero():
    """bench_fit on a tiny volume with a WLS speed ratio no machine reaches (7 s on 2 idle cores, 40 s busy)."""
    env = dict(os.environ, PYTHONPATH=str(BENCH.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(BENCH / "bench_fit.py"), "--shape", "16x16x8", "--check",
                           "--target", "wls_ratio_float64=1e9"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "wls_ratio_float64" in out["check"]["failed"]
    assert {t["name"] for t in out["targets"]} >= {"wls_ratio_float64", "wls_tensor_rel_diff", "csd_peaks_identical"}
    assert "MISS" in proc.stdout
