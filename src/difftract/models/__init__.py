"""Learned models: QCG-DTI (tensors from six DWIs) and DDTracking (generative tracking)."""
