"""Run every command on DIPY's three small real scans and print what each does.

    python scripts/real_scans_table.py [--work DIR]

The scans install with DIPY (``dipy.data.get_fnames``); nothing is downloaded. Each is
laid out as a subject folder (dwi.nii.gz, dwi.bval, dwi.bvec and a brain mask made from
the b0 at 20% of its 99th percentile, as the tests do), then ``check``, ``fit dti``,
``fit csd``, ``track`` and ``run --method det`` / ``run`` (DDTracking) are run in this
process, then ``run --method det`` with what its refusals suggest. A row is the exit code and the first error line, or the summary line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from dipy.data import get_fnames

from difftract.cli import main

SCANS = ("small_64D", "small_101D", "small_25")
FIXES = {"small_101D": ["--shell", "2774", "--lmax", "6"]}   # what the refusal on small_101D suggests


def subject(name: str, work: Path) -> Path:
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in zip(get_fnames(name=name), ("dwi.nii.gz", "dwi.bval", "dwi.bvec")):
        if dst == "dwi.nii.gz" and not str(src).endswith(".gz"):
            nib.save(nib.load(src), folder / dst)
        else:
            shutil.copy(src, folder / dst)
    img = nib.load(folder / "dwi.nii.gz")
    b0 = np.asarray(img.dataobj)[..., 0].astype(float)
    mask = (b0 > 0.2 * np.percentile(b0, 99)).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, img.affine), folder / "mask.nii.gz")
    return folder


def commands(folder: Path, out: Path) -> dict[str, list[str]]:
    scan = [str(folder / "dwi.nii.gz"), str(folder / "dwi.bval"), str(folder / "dwi.bvec"),
            "--mask", str(folder / "mask.nii.gz")]
    return {"check": ["check", *scan],
            "fit dti": ["fit", "dti", *scan, "--out-dir", str(out / "dti")],
            "fit csd": ["fit", "csd", *scan, "--out", str(out / "fod.nii.gz")],
            "track": ["track", *scan, "--min-len-mm", "5", "--out", str(out / "t.trx")],
            "run --method det": ["run", str(folder), "--out", str(out / "run_det"), "--method", "det"],
            "run (ddtracking)": ["run", str(folder), "--out", str(out / "run_dd")],
            "run --method det, as the refusal says": ["run", str(folder), "--out", str(out / "run_fix"), "--method", "det",
                                                      "--min-len-mm", "5", *FIXES.get(folder.name, [])]}


def outcome(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["-q", *argv])
    errors = [line for line in err.getvalue().splitlines() if line.startswith("difftract: error")]
    lines = [line for line in out.getvalue().splitlines() if line.strip() and not line.startswith("$ ")]
    return code, (errors[0] if errors else (lines[-1] if lines else "")).strip()


def main_table() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="real_scans_"))
    for name in SCANS:
        folder = subject(name, work / "subjects")
        out = work / "out" / name
        if out.exists():
            shutil.rmtree(out)
        for label, argv in commands(folder, out).items():
            code, line = outcome(argv)
            print(f"| {name} | {label} | {code} | {line[:300]} |", flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_table()
