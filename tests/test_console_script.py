"""Every command through the installed console script (a subprocess, as a shell runs it).

Happy paths on a tiny phantom, and the main error paths: a missing file, b-values that do
not match the scan, an existing output without ``--force``, each with exit code 2, one
line on stderr, and nothing written. (``train`` runs as a subprocess in the torchrun tests;
``demo`` in ``test_cli.py``; ``simulate`` there and in ``test_cluster.py``.)

Commands that do not need each other's outputs run side by side, each its own process: a
new interpreter spends ~4 s importing, and queued one after the other those seconds add up.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cli):
    root = tmp_path_factory.mktemp("script")
    res = cli("simulate", root / "ph", "--preset", "crossing", "--streamlines-per-bundle", "20",
              "--ndirs", "30", "--seed", "2")
    assert res.returncode == 0, res.stderr
    return root / "ph"


def _scan(ph):
    return [ph / "dwi.nii.gz", ph / "dwi.bval", ph / "dwi.bvec", "--mask", ph / "mask.nii.gz"]


def test_every_command_happy_path(cli_scripts, tiny, tmp_path):
    chain = {        # each needs the one before: the fODF is tracked, the tractogram scored
        "fit csd": ["fit", "csd", *_scan(tiny), "--out", tmp_path / "fod.nii.gz", "--lmax", "4"],
        "track": ["track", *_scan(tiny), "--sh", tmp_path / "fod.nii.gz", "--stop-mask", tiny / "wm.nii.gz",
                  "--out", tmp_path / "t.tck"],
        "score": ["score", tmp_path / "t.tck", "--phantom", tiny, "--json", tmp_path / "s.json"],
    }
    alone = {        # these read only the scan: they run beside the chain
        "check": ["check", *_scan(tiny)],
        "fit dti": ["fit", "dti", *_scan(tiny), "--out-dir", tmp_path / "dti"],
        "fit sh": ["fit", "sh", *_scan(tiny), "--out", tmp_path / "sh.nii.gz", "--lmax", "4"],
        "run": ["run", tiny, "--out", tmp_path / "run", "--method", "det"],
        "run ddtracking": ["run", tiny, "--out", tmp_path / "run_dd", "--method", "ddtracking", "--format", "trk"],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        chained = pool.submit(lambda: [cli_scripts(argv)[0] for argv in chain.values()])
        beside = pool.submit(cli_scripts, *alone.values())
        results = dict(zip([*chain, *alone], [*chained.result(), *beside.result()]))
    for name, res in results.items():
        assert res.returncode == 0, (name, res.stderr[-2000:])
        assert "error" not in res.stderr, (name, res.stderr[-2000:])
    assert (tmp_path / "dti" / "fa.nii.gz").is_file() and (tmp_path / "sh.json").is_file()
    assert json.loads((tmp_path / "s.json").read_text())["VB"] >= 1
    assert (tmp_path / "run" / "report.html").is_file() and (tmp_path / "run" / "fod.nii.gz").is_file()
    for made in ("report.html", "tracks.trk", "sh.nii.gz", "dti/fa.nii.gz", "scores.json"):
        assert (tmp_path / "run_dd" / made).is_file(), made


@pytest.mark.parametrize("case", ["missing file", "bvals", "exists"])
def test_main_error_paths_exit_2_and_write_nothing(cli_scripts, tiny, tmp_path, case):
    bad = tmp_path / "bad"
    bad.mkdir()
    scan = _scan(tiny)
    if case == "missing file":
        scan[0] = bad / "nope.nii.gz"
        expect = "nope.nii.gz"
    elif case == "bvals":
        (bad / "dwi.bval").write_text("0 1000 1000\n")
        scan[1] = bad / "dwi.bval"
        expect = "dwi.bval"
    else:
        (tmp_path / "out").mkdir()
        expect = "--force"
    out = tmp_path / "out"
    commands = [["fit", "dti", *scan, "--out-dir", out / "dti"],
                ["track", *scan, "--stop-mask", tiny / "wm.nii.gz", "--out", out / "t.trx"],
                ["fit", "csd", *scan, "--out", out / "f.nii.gz"]]
    if case == "exists":
        commands = [["fit", "dti", *scan, "--out-dir", out], ["run", tiny, "--out", out]]
        (out / "keep.txt").write_text("mine")
    for argv, res in zip(commands, cli_scripts(*commands)):     # side by side: each refuses before writing
        assert res.returncode == 2, (argv[:2], res.stdout[-500:], res.stderr[-500:])
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("difftract: error:") and expect in lines[0], res.stderr
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bad"] + (["out"] if case == "exists" else []))
