r"""Laplacian spectra of the compact manifolds, checked against their heat kernels by the heat trace.

With generator :math:`\Delta/2` and a homogeneous space, :math:`p_t(x, x)` is the same at every point, so
:math:`\mathrm{vol}(M)\, p_t(x, x) = \sum_i m_i e^{-\lambda_i t/2}`: the spectrum and the (independently coded)
heat kernel must agree to float64 round-off once the sum has converged.
"""

from __future__ import annotations

import math

import pytest
import torch

import geodiffusion as gd
from geodiffusion.manifolds import Manifold, Sphere, Torus

F64 = torch.float64

CASES = [
    ({"kind": "sphere", "dim": 1}, 40),
    ({"kind": "sphere", "dim": 2}, 40),
    ({"kind": "sphere", "dim": 3}, 40),
    ({"kind": "sphere", "dim": 15}, 40),
    ({"kind": "torus", "dim": 1}, 20),
    ({"kind": "torus", "dim": 3}, 200),
    ({"kind": "so3"}, 40),
    ({"kind": "su", "n": 2}, 40),
    ({"kind": "su", "n": 3}, 200),
    ({"kind": "product", "factor": {"kind": "sphere", "dim": 2}, "power": 2}, 100),
    ({"kind": "mixed_product", "factors": [{"kind": "sphere", "dim": 2}, {"kind": "so3"}]}, 100),
    ({"kind": "mixed_product", "factors": [{"kind": "su", "n": 2}, {"kind": "torus", "dim": 1}]}, 100),
]


@pytest.mark.parametrize(
    ("spec", "count"),
    CASES,
    ids=lambda c: "-".join(str(v) for v in c.values() if not isinstance(v, (dict, list))) if isinstance(c, dict) else str(c),
)
@pytest.mark.parametrize("t", [1.0, 3.0])
def test_heat_trace_of_the_spectrum_equals_volume_times_the_kernel_on_the_diagonal(spec, count, t):
    manifold = gd.build(spec, Manifold)
    ev, mult = manifold.laplacian_spectrum(count)
    assert ev.dtype == F64 and ev[0] == 0 and mult[0] == 1 and (ev.diff() > 0).all() and (mult > 0).all()
    terms = mult * torch.exp(-0.5 * ev * t)
    assert terms[-1] < 1e-16 * terms.sum(), "the spectrum's tail has not converged: raise count"
    x = manifold.random_point(3, torch.Generator().manual_seed(0), dtype=F64)
    log_p = manifold.heat_kernel().log_prob(x, x, t)
    # the uniform law is 1/vol(M); the heat kernels are exact to 1e-9 relative (docs/results.rst)
    torch.testing.assert_close(log_p - manifold.reference_log_prob(x), torch.log(terms.sum()).expand(3), atol=1e-9, rtol=0)


def test_closed_forms_of_sphere_and_torus_spectra():
    ev, mult = Sphere(dim=2).laplacian_spectrum(4)  # l(l+1), 2l+1
    assert ev.tolist() == [0, 2, 6, 12] and mult.tolist() == [1, 3, 5, 7]
    ev, mult = Sphere(dim=1).laplacian_spectrum(3)  # cos(l theta), sin(l theta)
    assert ev.tolist() == [0, 1, 4] and mult.tolist() == [1, 2, 2]
    ev, mult = Sphere(dim=5).laplacian_spectrum(3)  # l(l+4); 1, 6, 20 (traceless symmetric 2-tensors of R^6)
    assert ev.tolist() == [0, 5, 12] and mult.tolist() == [1, 6, 20]
    ev, mult = Torus(dim=2).laplacian_spectrum(6)  # sums of two squares, skipping 3: r_2 = 4 (d_1 - d_3)
    assert ev.tolist() == [0, 1, 2, 4, 5, 8] and mult.tolist() == [1, 4, 4, 4, 8, 4]
    ev, mult = Torus(dim=4).laplacian_spectrum(4)  # Jacobi: r_4(m) = 8 sigma(m) for odd m
    assert mult.tolist() == [1, 8, 24, 32]
    with pytest.raises(ValueError, match="count: expected a positive integer"):
        Torus(dim=2).laplacian_spectrum(0)
    with pytest.raises(ValueError, match="count: expected a positive integer"):
        Sphere(dim=2).laplacian_spectrum(0)
    with pytest.raises(NotImplementedError, match="no closed-form discrete Laplacian spectrum"):
        gd.build({"kind": "euclidean", "dim": 2}, Manifold).laplacian_spectrum(3)
    assert math.isclose(float(Torus(dim=127).laplacian_spectrum(3)[1][2]), 4 * math.comb(127, 2))  # two entries of +-1
