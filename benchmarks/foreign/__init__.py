"""Foreign test phantoms: difftract's geometry and ground truth with DIPY's signal (see README.md)."""

from .build import ForeignConfig, ForeignPhantom, build_foreign, save_foreign
from .layouts import LAYOUTS, crossroads
from .dipy_signal import MODELS, ForeignTissue

__all__ = ["ForeignConfig", "ForeignPhantom", "build_foreign", "save_foreign", "LAYOUTS", "crossroads",
           "MODELS", "ForeignTissue"]
