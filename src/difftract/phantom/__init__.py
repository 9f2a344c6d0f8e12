"""Ground-truth phantoms: bundle geometry, diffusion signal, masks, ROIs and streamlines."""

from .acquisition import Acquisition, AcquisitionRanges, AcquisitionSampler
from .geometry import Bundle, Tube, make_tube
from .presets import Layout, crossing, fibercup, random_layout
from .randomize import TissueDraw, TissueRanges, TissueSampler
from .signal import Tissue, make_scheme
from .simulate import BundleTruth, Phantom, PhantomConfig, simulate
from .write import save_phantom

__all__ = ["Bundle", "Tube", "make_tube", "Layout", "fibercup", "crossing", "random_layout",
           "Tissue", "make_scheme", "BundleTruth", "Phantom", "PhantomConfig", "simulate", "save_phantom",
           "Acquisition", "AcquisitionRanges", "AcquisitionSampler", "TissueDraw", "TissueRanges", "TissueSampler"]
