"""Model fitting, batched in torch with DIPY's numbers: DTI, signal SH, CSD fODFs and peaks.

- :mod:`.dti`      :class:`TensorModel` (WLS/OLS) -> :class:`TensorFit` (FA, MD, AD, RD, evecs, exports)
- :mod:`.tensor`   tensor algebra (element orders, Jacobi eigen-solver, scalar maps)
- :mod:`.sh`       :class:`SHModel` (descoteaux07, legacy flag, Laplace-Beltrami) -> :class:`SHFit`
- :mod:`.csd`      :class:`CsdModel` (constrained spherical deconvolution) -> :class:`CsdFit`
- :mod:`.response` single-fibre response estimation for CSD
- :mod:`.peaks`    :func:`peaks_from_sh`, :func:`peaks_from_evecs` -> :class:`Peaks`
"""

from .csd import CsdFit, CsdModel
from .dti import TensorFit, TensorModel
from .peaks import Peaks, peaks_from_evecs, peaks_from_sh
from .response import estimate_response
from .sh import SHFit, SHModel

__all__ = ["TensorModel", "TensorFit", "SHModel", "SHFit", "CsdModel", "CsdFit", "estimate_response",
           "Peaks", "peaks_from_sh", "peaks_from_evecs"]
