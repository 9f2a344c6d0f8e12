"""Principal directions with a bounded gradient."""

from __future__ import annotations

import numpy as np
import torch

from difftract.learn import principal_direction, tensor_peaks
from difftract.reconst import tensor as T

from .conftest import tensor_along


def test_values_are_the_principal_eigenvectors():
    rng = np.random.default_rng(0)
    lt = torch.as_tensor(tensor_along(rng.normal(size=(50, 3)), 1.5, 0.4), dtype=torch.float64)
    v = principal_direction(lt)
    _, evecs = torch.linalg.eigh(T.from_lower_triangular(lt))
    assert torch.allclose((v * evecs[..., :, -1]).sum(-1).abs(), torch.ones(50, dtype=torch.float64), atol=1e-10)
    zero = principal_direction(torch.zeros(2, 6, dtype=torch.float64))
    assert torch.equal(zero, torch.zeros(2, 3, dtype=torch.float64))


def test_gradient_is_eighs_where_eigenvalues_are_apart_and_finite_where_they_meet():
    rng = np.random.default_rng(1)
    a = torch.as_tensor(rng.normal(size=3))
    q, _ = np.linalg.qr(rng.normal(size=(20, 3, 3)))          # random frames, three distinct eigenvalues
    D = q @ np.diag([1.7, 0.5, 0.2]) @ np.swapaxes(q, -1, -2)
    lt = T.lower_triangular(torch.as_tensor(D)).clone().requires_grad_(True)
    ((principal_direction(lt, iterations=40) @ a) ** 2).sum().backward()
    ours = lt.grad.clone()
    lt.grad = None
    _, evecs = torch.linalg.eigh(T.from_lower_triangular(lt))
    ((evecs[..., :, -1] @ a) ** 2).sum().backward()
    torch.testing.assert_close(ours, lt.grad, rtol=1e-6, atol=1e-9)

    iso = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    ((principal_direction(iso) @ a) ** 2).sum().backward()
    assert torch.isfinite(iso.grad).all()
    D = T.from_lower_triangular(iso.detach().clone().requires_grad_(True))
    _, evecs = torch.linalg.eigh(D)
    assert not torch.isfinite(torch.autograd.grad((evecs[..., :, -1] @ a).square().sum(), D)[0]).all()


def test_peaks_respect_the_mask(straight_field):
    peaks = tensor_peaks(straight_field["lt"], torch.as_tensor(straight_field["mask"]))
    assert peaks.shape == straight_field["shape"] + (1, 3)
    norms = peaks.norm(dim=-1)[..., 0]
    assert torch.all(norms[torch.as_tensor(straight_field["mask"])] > 0.99) and norms[0, 0, 0] == 0


def test_indefinite_tensors_keep_their_direction_and_a_finite_gradient():
    """A negative eigenvalue larger in magnitude than l1 (noisy fits, network outputs)."""
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(10, 3, 3)))
    D = q @ np.diag([0.9, 0.1, -1.5]) @ np.swapaxes(q, -1, -2)
    lt = T.lower_triangular(torch.as_tensor(D)).clone().requires_grad_(True)
    v = principal_direction(lt, iterations=60)
    assert np.allclose(np.abs((v.detach().numpy() * q[..., :, 0]).sum(-1)), 1.0, atol=1e-9)
    a = torch.as_tensor(rng.normal(size=3))
    ((v @ a) ** 2).sum().backward()
    ours = lt.grad.clone()
    lt.grad = None
    _, evecs = torch.linalg.eigh(T.from_lower_triangular(lt))
    ((evecs[..., :, -1] @ a) ** 2).sum().backward()
    torch.testing.assert_close(ours, lt.grad, rtol=1e-6, atol=1e-9)
