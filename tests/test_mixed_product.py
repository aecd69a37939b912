r"""Products :math:`M_1 \times \dots \times M_k` of different manifolds (``mixed_product``): every map, the heat kernel
and its score are the factors' on their slices, and a real factor inside a complex product (SU(n) x S^2) keeps its
slice real. The registry-wide contracts (check_manifold, check_heat_kernel with isometries and the semigroup
identity) and the heat trace of the spectrum run on the examples in test_contracts.py and test_laplacian_spectra.py;
the samplers keep every iterate on the product in test_riemannian.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.models.tangent import TangentMLP

F64 = torch.float64
S2 = {"kind": "sphere", "dim": 2}
SO3 = {"kind": "so3"}
SU3 = {"kind": "su", "n": 3}
T2 = {"kind": "torus", "dim": 2}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("factors", [[S2, SO3, T2], [SU3, S2]], ids=["s2xso3xt2", "su3xs2"])
def test_maps_heat_kernel_and_score_are_the_factors_on_their_slices(factors):
    m = gd.build({"kind": "mixed_product", "factors": factors})
    parts = [gd.build(f) for f in factors]
    assert m.dim == sum(p.dim for p in parts)
    assert m.point_shape == (sum(math.prod(p.point_shape) for p in parts),)
    gen = _gen()
    x0, x = m.random_point(5, gen, dtype=F64), m.random_point(5, gen, dtype=F64)
    assert x.dtype == (torch.complex128 if factors[0] is SU3 else F64) and m.belongs(x).all()
    torch.testing.assert_close(m.join(m.split(x)), x, rtol=0, atol=0)
    a, b = m.split(x0), m.split(x)
    v = m.random_tangent(x0, gen)
    dist2 = sum(p.dist(u, w) ** 2 for p, u, w in zip(parts, a, b, strict=True))
    torch.testing.assert_close(m.dist(x0, x), dist2.sqrt(), rtol=1e-12, atol=1e-12)
    for i, p in enumerate(parts):
        torch.testing.assert_close(m.split(m.log(x0, x))[i], p.log(a[i], b[i]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m.split(m.exp(x0, v))[i], p.exp(a[i], m.split(v)[i]), rtol=1e-12, atol=1e-12)
    t = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0], dtype=F64)  # one time per point
    kernel, kernels = m.heat_kernel(), [p.heat_kernel() for p in parts]
    expected = sum(k.log_prob(u, w, t) for k, u, w in zip(kernels, a, b, strict=True))
    torch.testing.assert_close(kernel.log_prob(x0, x, t), expected, rtol=1e-12, atol=1e-12)
    score = m.split(kernel.score(x0, x, t))
    for s, k, u, w in zip(score, kernels, a, b, strict=True):
        torch.testing.assert_close(s, k.score(u, w, t), rtol=1e-12, atol=1e-12)
    draws = kernel.sample(x0, t, gen)
    assert draws.dtype == x0.dtype and m.belongs(draws).all()


def test_factor_options_choose_each_factors_estimator():
    spec = {"kind": "mixed_product", "factors": [S2, SO3]}
    m = gd.build(spec)
    gen = _gen(1)
    x0, x = m.random_point(4, gen, dtype=F64), m.random_point(4, gen, dtype=F64)
    options = [{"estimator": "eigen"}, {"estimator": "sum_over_paths"}]
    kernel = m.heat_kernel(factor_options=options)
    factors = [gd.build(f).heat_kernel(**o) for f, o in zip(spec["factors"], options, strict=True)]
    expected = sum(k.log_prob(u, w, 0.7) for k, u, w in zip(factors, m.split(x0), m.split(x), strict=True))
    torch.testing.assert_close(kernel.log_prob(x0, x, 0.7), expected, rtol=1e-12, atol=1e-12)


def test_a_real_factor_inside_a_complex_product_keeps_its_slice_real():
    m = gd.build({"kind": "mixed_product", "factors": [SU3, S2]})
    x = m.random_point(3, _gen(), dtype=F64)
    sphere = slice(9, 12)
    assert (x[:, sphere].imag == 0).all()
    bent = x.clone()
    bent[0, sphere] = bent[0, sphere] + 1e-3j  # still a unit vector in its real part, but not real
    assert m.belongs(bent).tolist() == [False, True, True]
    v = m.proj(x, torch.complex(torch.ones_like(x.real), torch.ones_like(x.real)))
    assert (v[:, sphere].imag == 0).all() and m.belongs(m.exp(x, v)).all()


def test_spectrum_is_the_sums_of_one_eigenvalue_per_factor():
    m = gd.build({"kind": "mixed_product", "factors": [S2, SO3]})
    ev, mult = m.laplacian_spectrum(5)
    # S^2: l(l+1) with multiplicity 2l+1; SO(3) (Frobenius metric): l(l+1)/2 with (2l+1)^2; 3 = 2 + 1 or 0 + 3
    assert ev.tolist() == [0.0, 1.0, 2.0, 3.0, 5.0] and mult.tolist() == [1, 9, 3, 3 * 9 + 25, 3 * 25]


@pytest.mark.parametrize("factors", [[S2, SO3], [{"kind": "su", "n": 2}, S2]], ids=["s2xso3", "su2xs2"])
def test_short_training_and_sampling_stay_on_the_product(factors):
    """The tangent MLP reads a complex product through its real view and its output is projected per factor."""
    process = gd.build({"kind": "brownian", "manifold": {"kind": "mixed_product", "factors": factors}, "beta_max": 10.0})
    m = process.manifold
    mu = m.random_point(1, _gen(0), dtype=F64)
    data = process.heat_kernel.sample(mu.expand(256, -1), 0.2, _gen(1))
    data = data.to(torch.complex64) if m.is_complex else data.float()
    model = TangentMLP(manifold=m.spec, hidden=32, depth=1, process=process.spec)
    trainer = gd.training.Trainer(model, process, data, {"steps": 20, "batch_size": 64}, progress=False)
    history = trainer.fit()
    assert len(history) == 20 and all(math.isfinite(v) for v in history)
    with torch.no_grad():
        samples = gd.build({"kind": "geodesic_euler_maruyama", "steps": 20}).sample(model, process, (64,) + m.point_shape)
    assert samples.shape == (64,) + m.point_shape and samples.dtype == data.dtype and m.belongs(samples).all()


def test_bad_input_is_rejected_before_any_work():
    with pytest.raises(ValidationError, match="factors"):
        gd.build({"kind": "mixed_product", "factors": [S2]})
    with pytest.raises(ValidationError, match="factor_options"):
        gd.build({"kind": "mixed_product", "factors": [S2, SO3]}).heat_kernel(factor_options=[{}])
    with pytest.raises(ValidationError, match="mixed_product"):
        gd.build({"kind": "mixed_product_heat", "manifold": S2})
    complex_product = gd.build({"kind": "mixed_product", "factors": [SU3, S2]})
    with pytest.raises(ValueError, match="complex"):
        complex_product.proj(torch.zeros(2, 12), torch.zeros(2, 12))
    with pytest.raises(ValueError, match="shape"):
        complex_product.belongs(torch.zeros(2, 11, dtype=torch.complex128))
    with pytest.raises(ValueError, match="not compact"):
        gd.build({"kind": "mixed_product", "factors": [S2, {"kind": "euclidean", "dim": 2}]}).random_uniform(3)


def test_a_users_subclass_keeps_the_product_heat_kernel():
    """The heat kernel's spec check accepts a subclass of MixedProductManifold registered under its own kind."""

    class Poses(gd.MixedProductManifold, kind="test_poses_s2_so3"):
        pass

    try:
        m = Poses(factors=[S2, SO3])
        x = m.random_point(3, _gen(), dtype=F64)
        kernel = m.heat_kernel()
        assert isinstance(kernel, gd.MixedProductHeatKernel) and bool(torch.isfinite(kernel.log_prob(x, x, 0.5)).all())
    finally:
        gd.unregister(Poses)


def test_building_a_product_leaves_the_global_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    gd.build({"kind": "mixed_product", "factors": [{"kind": "su", "n": 2}, S2]}).heat_kernel()
    assert torch.equal(torch.rand(3), expected)
