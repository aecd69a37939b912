"""Contract suites: every check on every registered concrete class, parametrised from the registry.

A class registered before collection (built-in or imported by a plugin) is
covered here without writing a test for it.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DTYPES, all_registered_examples, registered_examples
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.testing import (
    check_equivariant,
    check_group,
    check_heat_kernel,
    check_kernel,
    check_manifold,
    check_process,
    check_sampler,
    strategies,
    tolerance,
)


@pytest.mark.parametrize("spec", all_registered_examples())
def test_spec_round_trips_through_json(spec):
    obj = gd.build(spec)
    rebuilt = gd.build(spec.model_dump_json(), type(obj).family)
    assert type(rebuilt) is type(obj)
    assert rebuilt.spec == spec


@pytest.mark.parametrize("spec", all_registered_examples())
def test_spec_rejects_unknown_fields(spec):
    with pytest.raises(ValidationError, match="not_a_field"):
        type(spec).model_validate({**spec.model_dump(), "not_a_field": 1})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", registered_examples(gd.Group))
@given(seed=strategies.seeds())
def test_group_axioms_and_action_homomorphism(spec, dtype, seed):
    check_group(gd.build(spec), seed=seed, dtype=dtype)


@pytest.mark.parametrize("spec", registered_examples(gd.Group))
@given(data=st.data())
def test_inverse_action_undoes_action_on_strategy_drawn_elements(spec, data):
    group = gd.build(spec)
    g = data.draw(strategies.group_elements(group, n=3))
    x = data.draw(strategies.group_points(group, n=3))
    torch.testing.assert_close(group.act(group.inverse(g), group.act(g, x)), x, atol=tolerance(torch.float64, "exact"), rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", registered_examples(gd.Manifold))
@given(seed=strategies.seeds())
def test_manifold_exp_log_dist_identities(spec, dtype, seed):
    check_manifold(gd.build(spec), seed=seed, dtype=dtype)


@pytest.mark.parametrize("spec", registered_examples(gd.Manifold))
def test_manifold_heat_kernel_exists_iff_declared(spec):
    manifold = gd.build(spec)
    if manifold.has_heat_kernel:
        assert isinstance(manifold.heat_kernel(), gd.HeatKernel)
    else:
        with pytest.raises(NotImplementedError):
            manifold.heat_kernel()


@pytest.mark.parametrize("spec", registered_examples(gd.Manifold))
def test_random_tangent_is_standard_gaussian_in_the_tangent_space(spec):
    """|v|^2 of a standard Gaussian in T_x M (dimension dim) is chi-square with dim degrees of freedom."""
    manifold = gd.build(spec)
    gen = torch.Generator().manual_seed(0)
    n = 4000
    x = manifold.random_point(1, gen, dtype=torch.float64).expand((n,) + tuple(manifold.point_shape)).contiguous()
    v = manifold.random_tangent(x, gen)
    torch.testing.assert_close(manifold.proj(x, v), v, atol=tolerance(torch.float64, "exact"), rtol=0)
    sq = manifold.inner(x, v, v).real
    z = (float(sq.mean()) - manifold.dim) / math.sqrt(2 * manifold.dim / n)
    assert abs(z) < 4, (float(sq.mean()), manifold.dim)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", registered_examples(gd.HeatKernel))
def test_heat_kernel_is_normalised_symmetric_and_solves_heat_equation(spec, dtype):
    check_heat_kernel(gd.build(spec), seed=0, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", registered_examples(gd.Kernel))
@given(seed=strategies.seeds())
def test_kernel_is_symmetric_psd_and_equivariant(spec, dtype, seed):
    check_kernel(gd.build(spec), seed=seed, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", registered_examples(gd.Process))
@given(seed=strategies.seeds())
def test_process_score_is_grad_log_marginal_and_solves_fokker_planck(spec, dtype, seed):
    check_process(gd.build(spec), seed=seed, dtype=dtype, n_mc=500)


@pytest.mark.parametrize("spec", registered_examples(gd.Process))
def test_process_marginal_at_T_matches_prior(spec):
    check_process(gd.build(spec), seed=0, dtype=torch.float64, n_mc=20000)


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype``'s precision; complex inputs (links of SU(n)^k) stay complex."""
    return x.to(dtype.to_complex() if x.is_complex() else dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", registered_examples(gd.ScoreModel))
def test_score_model_is_equivariant_under_its_claimed_group(spec, dtype):
    torch.manual_seed(0)
    model = gd.build(spec).to(dtype)
    if model.group is None:
        pytest.skip(f"{type(model).__name__} claims no symmetry")
    x = _cast(model.example_input(5, torch.Generator().manual_seed(1)), dtype)
    t = torch.full((5,), 0.3, dtype=dtype)
    check_equivariant(lambda z: model(t, z), model.group, x, output="vector")


@pytest.mark.parametrize("spec", registered_examples(gd.ScoreModel))
def test_score_model_batched_call_equals_stacked_single_calls(spec):
    torch.manual_seed(0)
    model = gd.build(spec).double()
    x = _cast(model.example_input(4, torch.Generator().manual_seed(2)), torch.float64)
    t = torch.linspace(0.1, 0.9, 4, dtype=torch.float64)
    out = model(t, x)
    assert out.shape == x.shape and out.dtype == x.dtype
    single = torch.cat([model(t[i : i + 1], x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(out, single, atol=tolerance(torch.float64, "exact"), rtol=0)


@pytest.mark.parametrize("process_kind", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("spec", registered_examples(gd.Sampler))
def test_sampler_with_exact_score_reproduces_gaussian_target(spec, process_kind):
    check_sampler(gd.build(spec), gd.build({"kind": process_kind}), seed=0)
