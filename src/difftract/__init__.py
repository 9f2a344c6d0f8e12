"""difftract: deep-learning diffusion-MRI tractography.

The package reads a diffusion scan (4D NIfTI, FSL .bval/.bvec, brain mask), fits
models, tracks streamlines and scores them. Sub-packages:

- :mod:`difftract.io`      loading and validating inputs, writing outputs atomically
- :mod:`difftract.phantom` ground-truth phantoms (geometry, signal, scoring files)
"""

from importlib.metadata import PackageNotFoundError, version

from .threads import passive_waits

passive_waits()     # before anything imports torch: see difftract.threads

try:
    __version__ = version("difftract")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
