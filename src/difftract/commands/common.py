"""Arguments and steps shared by several commands: scan inputs, device, outputs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np


log = logging.getLogger("difftract")


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    """DWI BVAL BVEC [--mask M] [--zero-nonfinite], read the same way by every command."""
    parser.add_argument("dwi", type=Path, metavar="DWI", help="4D NIfTI, volumes last")
    parser.add_argument("bval", type=Path, metavar="BVAL", help="FSL .bval file")
    parser.add_argument("bvec", type=Path, metavar="BVEC", help="FSL .bvec file (3 x N)")
    parser.add_argument("--mask", type=Path, metavar="M",
                        help="3D brain mask on the DWI grid (default: every voxel is fitted)")
    parser.add_argument("--zero-nonfinite", action="store_true", help="set NaN/Inf voxels to 0 instead of refusing")


def nifti_output(text: str) -> Path:
    """argparse type of a NIfTI output: refused at parsing when not named *.nii or *.nii.gz."""
    from ..errors import ConfigError
    from ..io.nifti import check_nifti_name

    try:
        return check_nifti_name(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_compute_arguments(parser: argparse.ArgumentParser,
                          dtype_help: str = "compute precision; auto is float64 on CPU and float32 on GPU",
                          chunk_help: str = "voxels fitted at once; bounds memory (default: the model's, e.g. "
                                            "50000 for DTI, 2000 for CSD on CPU)") -> None:
    """--device, --dtype, --chunk-size."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N "
                                                         "(default: %(default)s)")
    parser.add_argument("--dtype", choices=("auto", "float32", "float64"), default="auto",
                        help=f"{dtype_help} (default: %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=None, help=chunk_help)
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """--matmul-dtype and --symmetries, how DDTracking's network runs (``track``, ``run``, ``cohort``)."""
    from ..models.ddtracking.defaults import MATMUL_DTYPES
    from ..models.ddtracking.symmetrise import SUBGROUPS

    parser.add_argument("--matmul-dtype", choices=MATMUL_DTYPES, default="float32",
                        help="DDTracking's large products (default: %(default)s: the tracking --dtype's; bfloat16: "
                             "faster on CPUs with AMX or AVX512-BF16)")
    sizes = ", ".join(f"{name} {len(members)}" for name, members in SUBGROUPS.items() if name != "none")
    parser.add_argument("--symmetries", choices=list(SUBGROUPS), default="none",
                        help="DDTracking: average each step over this group of the voxel grid's symmetries, one "
                             f"network copy per member, so that each step turns with the scan (copies: {sizes}; "
                             "default: %(default)s)")


def add_training_run_arguments(parser, seed: int, device: str) -> None:
    """--seed, --device, --resume, --force: how every trainer's run starts (W is its --out weights)."""
    parser.add_argument("--seed", type=int, default=seed, help="(default: %(default)s)")
    parser.add_argument("--device", default=device, help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue from W.ckpt.pt")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")


def compute_of(args: argparse.Namespace):
    """--device, --dtype and --chunk-size as the pipeline's :class:`~difftract.pipeline.Compute` (checked now)."""
    from ..pipeline.compute import Compute

    compute = Compute(device=args.device, dtype=args.dtype, chunk_size=args.chunk_size)
    compute.torch_device     # an unknown or absent device is refused before the scan is read
    return compute


def load_scan(args: argparse.Namespace):
    """Load and validate the scan named by :func:`add_scan_arguments`."""
    from ..io.dwi import load_dwi

    dwi = load_dwi(args.dwi, args.bval, args.bvec, args.mask, zero_nonfinite=args.zero_nonfinite)
    if dwi.mask is None:
        log.info("no --mask: fitting all %d voxels", int(np.prod(dwi.shape)))
    return dwi


def scan_inputs(args: argparse.Namespace) -> list[Path]:
    return [p for p in (args.dwi, args.bval, args.bvec, args.mask) if p is not None]


def output_files(*paths: Path | None, sidecars: tuple[Path | None, ...] = ()) -> list[Path]:
    """The files a command will write: ``paths`` plus the JSON sidecars of ``sidecars``."""
    from ..io.sidecar import sidecar_path

    return [p for p in paths if p is not None] + [sidecar_path(p) for p in sidecars if p is not None]
