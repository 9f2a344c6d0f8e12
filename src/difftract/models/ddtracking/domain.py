"""What a DDTracking network read in training, and whether a scan to be tracked reads alike.

DDTracking's input is the SH of one shell (the one nearest b = 1000,
:func:`.data.signal_sh_shell`; for a network of ``input`` fodf, the CSD fODF of the highest
shell) on a voxel grid, so its domain is that shell's b-value and direction count, the voxel size and
the SNR (:mod:`difftract.training.domain` holds the shared rules). Training writes it into the
weights' ``meta["domain"]`` (a stream's domain is the shared :func:`difftract.training.domain.stream_domain`);
``track`` and ``run`` call :func:`scan_domain` and warn in one line
when the scan lies outside, and the sidecar records the comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...reconst.sh import shell_groups
from ...training.domain import provenance_snr, provenance_tissue, scan_report, simulated, subjects_domain
from .data import signal_sh_shell


def read_shell(bvals, input: str = "signal") -> tuple[float, int]:
    """The shell a network of ``input`` reads from these b-values and its number of volumes: the one
    nearest b = 1000 (:func:`.data.signal_sh_shell`), or for the CSD fODF the highest (as
    :class:`~difftract.reconst.csd.CsdModel` picks it)."""
    groups = shell_groups(np.asarray(bvals, dtype=float))
    if input == "signal" or not groups:          # (no shell: signal_sh_shell says so)
        shell = signal_sh_shell(bvals)
        group = next(g for g in groups if g.bval == shell)
    else:
        group = groups[-1]                       # ascending: the highest, as reconst.sh.pick_shell takes it
    return float(group.bval), len(group.indices)


def training_domain(subjects: list[Path], input: str = "signal") -> dict:
    """The domain of training subject folders: the read shells, their direction counts, voxel sizes, SNR."""
    import nibabel as nib

    from ...io.dwi import subject_files
    from ...io.gradients import read_bvals

    shells, ndirs, sizes = [], [], []
    for directory in subjects:
        dwi, bval, _, _ = subject_files(directory)
        shell, n = read_shell(read_bvals(bval), input)
        shells.append(np.array([shell]))
        ndirs.append(n)
        sizes.extend(float(v) for v in nib.load(dwi).header.get_zooms()[:3])
    made = [simulated(d) for d in subjects]
    domain = subjects_domain(shells, sizes, ndirs=ndirs, snr=[provenance_snr(m) for m in made])
    domain["tissue"] = provenance_tissue(made)
    return domain


def scan_domain(meta: dict, dwi) -> dict:
    """How a scan compares with the weights' domain: ``training_domain``, ``b0_snr_estimate``, ``domain_warnings``."""
    domain = meta.get("domain")
    shell, n = read_shell(dwi.bvals, meta.get("config", {}).get("input", "signal"))
    return scan_report(domain, dwi.signal, dwi.bvals, dwi.mask, np.array([shell]), dwi.voxel_sizes, ndirs=n)
