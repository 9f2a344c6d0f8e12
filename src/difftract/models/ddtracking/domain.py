"""What a DDTracking network read in training, and whether a scan to be tracked reads alike.

DDTracking's input is the SH of one shell (the one nearest b = 1000, :func:`.data.signal_sh_shell`)
on a voxel grid, so its domain is that shell's b-value and direction count, the voxel size and
the SNR (:mod:`difftract.training.domain` holds the shared rules). Training writes it into the
weights' ``meta["domain"]``; ``track`` and ``run`` call :func:`scan_domain` and warn in one line
when the scan lies outside, and the sidecar records the comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...io.gradients import B0_THRESHOLD
from ...training.domain import (check_domain, provenance_snr, provenance_tissue, scan_snr, stream_domain,
                                subjects_domain)
from .data import signal_sh_shell

SHELL_TOLERANCE = 50.0     # s/mm^2: volumes within it of the read shell belong to it


def read_shell(bvals) -> tuple[float, int]:
    """The shell DDTracking reads from these b-values and its number of volumes."""
    bvals = np.asarray(bvals, dtype=float)
    shell = signal_sh_shell(bvals)
    return shell, int(np.sum((bvals > B0_THRESHOLD) & (np.abs(bvals - shell) <= SHELL_TOLERANCE)))


def training_domain(subjects: list[Path]) -> dict:
    """The domain of training subject folders: the read shells, their direction counts, voxel sizes, SNR."""
    import nibabel as nib

    from ...io.dwi import subject_files
    from ...io.gradients import read_bvals

    shells, ndirs, sizes, snrs = [], [], [], []
    for directory in subjects:
        dwi, bval, _, _ = subject_files(directory)
        shell, n = read_shell(read_bvals(bval))
        shells.append(np.array([shell]))
        ndirs.append(n)
        sizes.extend(float(v) for v in nib.load(dwi).header.get_zooms()[:3])
        snrs.append(provenance_snr(directory))
    domain = subjects_domain(shells, sizes, ndirs=ndirs, snr=snrs)
    domain["tissue"] = provenance_tissue(subjects)
    return domain


def streamed_domain(phantom, presets) -> dict:
    """The domain of streamed phantoms: :func:`~difftract.training.domain.stream_domain` with the direction counts."""
    domain = stream_domain(phantom)
    if phantom.randomize:
        domain["ndirs"] = list(map(int, phantom.acquisition_ranges.ndirs))
    else:
        counts = np.atleast_1d(phantom.ndirs)
        domain["ndirs"] = [int(counts.min()), int(counts.max())]
    domain["presets"] = list(presets)
    return domain


def scan_domain(meta: dict, dwi) -> dict:
    """How a scan compares with the weights' domain: ``training_domain``, ``b0_snr_estimate``, ``domain_warnings``."""
    domain = meta.get("domain")
    shell, n = read_shell(dwi.bvals)
    snr = scan_snr(dwi.signal, dwi.bvals, dwi.mask) if domain and domain.get("snr") else None
    warnings = check_domain(domain, np.array([shell]), dwi.voxel_sizes, snr, ndirs=n)
    return {"training_domain": domain, "b0_snr_estimate": snr, "domain_warnings": warnings}
