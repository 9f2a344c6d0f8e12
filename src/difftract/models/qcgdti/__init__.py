"""QCG-DTI: diffusion tensors from one b0 and six DWIs of any q-space scheme."""

from .model import VARIANTS, QCGConfig, QCGDTI, build_model
from .predict import QCGTensorModel, load_qcgdti
from .schemes import DSM6, SixSet, check_six, design_condition, fixed_six, flexible_six

__all__ = ["VARIANTS", "QCGConfig", "QCGDTI", "build_model", "QCGTensorModel", "load_qcgdti", "DSM6", "SixSet",
           "check_six", "design_condition", "fixed_six", "flexible_six"]
