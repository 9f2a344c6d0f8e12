"""``difftract check``: validate a scan as every command reads it, and describe it; writes nothing."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def add_parser(sub) -> None:
    check = sub.add_parser(
        "check", help="validate a scan (DWI, bval, bvec, mask) and describe it",
        description="Load a DWI with its FSL gradient files and optional brain mask exactly as every other "
                    "command does, run all input checks (4D image, counts, bvec layout and norms, b0 present, "
                    "mask grid, NaN/Inf, readable files) and print what difftract sees. Writes nothing.",
        epilog="example:\n  difftract check dwi.nii.gz dwi.bval dwi.bvec --mask mask.nii.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("dwi", type=Path, metavar="DWI", help="4D NIfTI, volumes last")
    check.add_argument("bval", type=Path, metavar="BVAL", help="FSL .bval file")
    check.add_argument("bvec", type=Path, metavar="BVEC", help="FSL .bvec file (3 x N)")
    check.add_argument("--mask", type=Path, metavar="M", help="3D brain mask on the DWI grid")
    check.add_argument("--zero-nonfinite", action="store_true", help="set NaN/Inf voxels to 0 instead of refusing")
    check.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    from ..io.dwi import load_dwi

    dwi = load_dwi(args.dwi, args.bval, args.bvec, args.mask, zero_nonfinite=args.zero_nonfinite)
    det = np.linalg.det(dwi.affine[:3, :3])
    print(f"{args.dwi}: {dwi!r}")
    print(f"  affine determinant {'positive (FSL bvec x flipped on reading)' if det > 0 else 'negative'}; "
          f"data range {dwi.data_range[0]:.4g}..{dwi.data_range[1]:.4g}")
    return 0
