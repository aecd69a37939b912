"""Kernels: closed forms against independent references, curl/divergence identities by autograd,
groups of combinations, the dtype/device contract, bad input, and broken kernels check_kernel catches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import gamma, kv

import geodiffusion as gd
from geodiffusion.kernels import CurlFree, Diagonal, DivergenceFree, Matern12, Matern32, Matern52, Periodic, Product, Sum
from geodiffusion.testing import CheckError, check_kernel, tolerance

EXACT = tolerance(torch.float64, "exact")


def _matern_reference(r: np.ndarray, nu: float, lengthscale: float, variance: float) -> np.ndarray:
    """The general Matérn form with the modified Bessel function K_nu (scipy), independent of the closed forms."""
    a = np.sqrt(2 * nu) * r / lengthscale
    return variance * 2 ** (1 - nu) / gamma(nu) * a**nu * kv(nu, a)


@pytest.mark.parametrize(("cls", "nu"), [(Matern12, 0.5), (Matern32, 1.5), (Matern52, 2.5)])
def test_matern_closed_form_equals_bessel_form(cls, nu):
    kernel = cls(input_dim=2, lengthscale=0.7, variance=1.3)
    x1 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x2 = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    r = torch.cdist(x1, x2).numpy()
    np.testing.assert_allclose(kernel(x1, x2)[..., 0, 0].numpy(), _matern_reference(r, nu, 0.7, 1.3), rtol=1e-10)


def test_periodic_kernel_repeats_with_its_period_and_matches_its_formula():
    kernel = Periodic(period=0.9, lengthscale=0.6, variance=2.0)
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)[:, None]
    k = kernel(x, x)[..., 0, 0]
    torch.testing.assert_close(kernel(x + 0.9, x)[..., 0, 0], k, atol=EXACT, rtol=0)
    diff = (x - x.T).numpy()
    np.testing.assert_allclose(k.numpy(), 2.0 * np.exp(-2 * np.sin(np.pi * diff / 0.9) ** 2 / 0.36), rtol=1e-12)
    assert isinstance(kernel.group, gd.Translations)


def test_white_noise_is_diagonal_and_squared_exponential_keeps_its_closed_form():
    x = torch.tensor([[0.0], [0.5], [0.5], [2.0]], dtype=torch.float64)
    k = gd.build({"kind": "white_noise", "variance": 0.3})(x, x)[..., 0, 0]
    expected = 0.3 * torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(k, expected)
    se = gd.SquaredExponential(lengthscale=0.5, variance=2.0, output_dim=3)(x, x)
    torch.testing.assert_close(se[1, 3], 2.0 * math.exp(-0.5 * 1.5**2 / 0.25) * torch.eye(3, dtype=torch.float64))


def _se(x: torch.Tensor, lengthscale: float, variance: float) -> torch.Tensor:
    return variance * torch.exp(-0.5 * (x**2).sum(-1) / lengthscale**2)


@pytest.mark.parametrize("dim", [2, 3])
def test_curl_free_is_minus_hessian_and_divergence_free_is_curl_curl_of_squared_exponential(dim):
    """k_cf(x, x') = -H k(x - x') and k_df = (H - tr(H) I) k(x - x'), with H the autograd Hessian of the SE kernel."""
    delta = torch.randn(dim, generator=torch.Generator().manual_seed(dim), dtype=torch.float64)
    hess = torch.autograd.functional.hessian(lambda z: _se(z, 0.8, 1.7), delta)
    zero = torch.zeros(1, dim, dtype=torch.float64)
    cf = CurlFree(dim=dim, lengthscale=0.8, variance=1.7)(delta[None], zero)[0, 0]
    df = DivergenceFree(dim=dim, lengthscale=0.8, variance=1.7)(delta[None], zero)[0, 0]
    torch.testing.assert_close(cf, -hess, atol=EXACT, rtol=0)
    torch.testing.assert_close(df, hess - torch.trace(hess) * torch.eye(dim, dtype=torch.float64), atol=EXACT, rtol=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_divergence_free_columns_have_zero_divergence_and_curl_free_columns_zero_curl(dim):
    x2 = torch.randn(3, dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x1 = torch.randn(4, dim, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    # jac[a, b, i, j, c] = d k_ij(x1_a, x2_b) / d x1_a,c
    jac = torch.autograd.functional.jacobian(lambda z: DivergenceFree(dim=dim)(z, x2), x1)
    jac = torch.diagonal(jac, dim1=0, dim2=4).permute(4, 0, 1, 2, 3)
    divergence = torch.diagonal(jac, dim1=2, dim2=4).sum(-1)  # sum_i d k_ij / d x_i
    assert float(divergence.abs().max()) < 1e-12
    jac = torch.autograd.functional.jacobian(lambda z: CurlFree(dim=dim)(z, x2), x1)
    jac = torch.diagonal(jac, dim1=0, dim2=4).permute(4, 0, 1, 2, 3)
    curl = jac - jac.transpose(2, 4)  # d k_ij / d x_c - d k_cj / d x_i
    assert float(curl.abs().max()) < 1e-12


def test_combinations_declare_the_group_all_terms_respect():
    se = {"kind": "squared_exponential"}
    assert isinstance(Sum(kernels=[se, {"kind": "matern32"}]).group, gd.EuclideanGroup)
    assert isinstance(Product(kernels=[se, {"kind": "periodic"}]).group, gd.Translations)
    # scalar SE times I_2 (rho = I) plus a curl-free kernel (rho = R): only translations keep both
    mixed = Sum(kernels=[{"kind": "squared_exponential", "input_dim": 2, "output_dim": 2}, {"kind": "curl_free"}])
    assert isinstance(mixed.group, gd.Translations)
    check_kernel(mixed)
    vector = Sum(kernels=[{"kind": "diagonal"}, {"kind": "curl_free"}])
    assert isinstance(vector.group, gd.EuclideanGroup)
    check_kernel(vector)
    check_kernel(Diagonal(base={"kind": "periodic", "input_dim": 2}))


def test_nested_combination_round_trips_and_evaluates():
    product = {"kind": "kernel_product", "kernels": [{"kind": "matern12"}, {"kind": "periodic"}]}
    spec = {"kind": "kernel_sum", "kernels": [product, {"kind": "white_noise"}]}
    kernel = gd.build(spec)
    again = gd.build(kernel.spec.model_dump_json())
    x = torch.linspace(0, 1, 4, dtype=torch.float64)[:, None]
    torch.testing.assert_close(again(x, x), kernel(x, x))
    check_kernel(kernel)


def test_output_representation_follows_element_dtype_and_device():
    for kernel in (gd.SquaredExponential(input_dim=2, output_dim=2), CurlFree(), Product(**Product.examples()[1].model_dump())):
        g = kernel.group.sample(3, torch.Generator().manual_seed(0), dtype=torch.float64)
        assert kernel.output_representation(g).dtype == torch.float64
        assert kernel.output_representation(g.float()).dtype == torch.float32
        assert kernel.output_representation(g).shape == (3, kernel.output_dim, kernel.output_dim)


def test_bad_specs_and_inputs_are_rejected_before_work():
    with pytest.raises(ValueError, match="at most one matrix-valued"):
        Product(kernels=[{"kind": "curl_free"}, {"kind": "divergence_free"}])
    with pytest.raises(ValueError, match="one output dimension"):
        Sum(kernels=[{"kind": "curl_free"}, {"kind": "squared_exponential", "input_dim": 2}])
    with pytest.raises(ValueError, match="one input dimension"):
        Sum(kernels=[{"kind": "squared_exponential"}, {"kind": "matern52", "input_dim": 2}])
    with pytest.raises(ValueError, match="scalar kernel"):
        Diagonal(base={"kind": "squared_exponential", "input_dim": 4})
    with pytest.raises(Exception, match="kernels"):
        Sum(kernels=[{"kind": "white_noise"}])
    with pytest.raises(Exception, match="dim"):
        CurlFree(dim=4)
    with pytest.raises(ValueError, match=r"\[\.\.\., n, 2\]"):
        CurlFree()(torch.zeros(3, 3), torch.zeros(2, 2))


# --- check_kernel catches broken kernels -------------------------------------------------


class ForgetsRho(CurlFree, register=False):
    """Claims E(2) but says outputs are invariant: vector outputs must rotate with the inputs."""

    def output_representation(self, g):
        return gd.Kernel.output_representation(self, g)


class DropsOutputAxes(gd.SquaredExponential, register=False):
    def __call__(self, x1, x2):
        return super().__call__(x1, x2)[..., :1, :1]


class IgnoresBatch(gd.SquaredExponential, register=False):
    def __call__(self, x1, x2):
        k = super().__call__(x1, x2)
        return k[:1].expand_as(k) if k.dim() > 4 else k


class RhoInDefaultDtype(gd.SquaredExponential, register=False):
    def output_representation(self, g):
        return torch.eye(self.output_dim, dtype=torch.float32).expand(g.shape[:-2] + (self.output_dim, self.output_dim))


@pytest.mark.parametrize(
    ("kernel", "identity"),
    [
        (ForgetsRho(), "equivariance"),
        (DropsOutputAxes(output_dim=2), "shape"),
        (IgnoresBatch(), "batched"),
        (RhoInDefaultDtype(input_dim=2, output_dim=2), "dtype"),
    ],
)
def test_check_kernel_catches_broken_kernels(kernel, identity):
    with pytest.raises(CheckError, match=identity):
        check_kernel(kernel, dtype=torch.float64)
