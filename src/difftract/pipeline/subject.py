"""A subject: where its scan and optional extras are, and the one read of its DWI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class Subject:
    """The files of one subject directory.

    Two layouts are recognised (:func:`difftract.io.dwi.subject_files`): difftract's own
    (``dwi.nii.gz dwi.bval dwi.bvec mask.nii.gz``, what ``difftract simulate`` writes) and
    the HCP's (``data.nii.gz bvals bvecs nodif_brain_mask.nii.gz``). ``wm.nii.gz`` is used
    as the white matter when present, and ``gt/scoring.json`` as ground truth.
    """

    directory: Path
    dwi: Path
    bval: Path
    bvec: Path
    mask: Path | None = None
    wm: Path | None = None
    truth: Path | None = None

    @classmethod
    def find(cls, directory: str | Path) -> Subject:
        """The subject in ``directory`` (an :class:`~difftract.errors.InputError` naming it when there is none)."""
        from ..io.dwi import subject_files

        directory = Path(directory)
        dwi, bval, bvec, mask = subject_files(directory)
        wm, truth = directory / "wm.nii.gz", directory / "gt" / "scoring.json"
        return cls(directory, dwi, bval, bvec, mask, wm if wm.is_file() else None, truth if truth.is_file() else None)

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def files(self) -> list[Path]:
        """Every file of the subject that a run reads."""
        return [p for p in (self.dwi, self.bval, self.bvec, self.mask, self.wm, self.truth) if p is not None]

    def require_mask(self) -> Path:
        if self.mask is None:
            raise ConfigError(f"{self.directory}: no brain mask (mask.nii.gz or nodif_brain_mask.nii.gz); run needs one")
        return self.mask

    def load(self, zero_nonfinite: bool = False):
        """Read and validate the scan (the DWI, its gradients and the brain mask): a :class:`~difftract.io.dwi.DWI`."""
        from ..io.dwi import load_dwi

        return load_dwi(self.dwi, self.bval, self.bvec, self.mask, zero_nonfinite=zero_nonfinite)
