"""Structure-preserving diffusion (SPDM): invariance conditions, weight-tied group convolutions and U-Nets,
frame averaging of a plain U-Net, and equivariant noise giving equivariant sampling trajectories."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPES, registered_examples
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.models.group_conv import (
    GroupConv2d,
    GroupNorm,
    GroupPool,
    LiftingConv2d,
    act_on_group_features,
    group_avg_pool2d,
    group_upsample2d,
)
from geodiffusion.models.unet import EquivariantUNet, UNet
from geodiffusion.processes.distributions import DiagonalGaussian
from geodiffusion.samplers.equivariant_noise import EquivariantNoiseSampler, equivariant_noise, frame_elements
from geodiffusion.testing import (
    CheckError,
    check_equivariant,
    check_invariance_conditions,
    equivariance_errors,
    invariance_condition_errors,
    tolerance,
)

C4 = {"kind": "cyclic", "n": 4, "action": "image"}
D4 = {"kind": "dihedral", "n": 4, "action": "image"}
TINY = {"image_size": 8, "channels": (4, 8), "norm_groups": 2, "time_embedding_dim": 8}


# --- invariance conditions ------------------------------------------------------------------------------

# Groups of linear isometries each registered Euclidean process must preserve (isotropic noise, drift a
# function of |x| or of each coordinate alone). A new Euclidean process is declared here or its test fails.
INVARIANCE_GROUPS = {
    "vp": [
        C4,
        D4,
        {"kind": "o", "dim": 3},
        {"kind": "so", "dim": 2},
        {"kind": "cyclic", "n": 5},
        {"kind": "permutation", "n": 3},
    ],
    "subvp": [C4, D4, {"kind": "o", "dim": 3}, {"kind": "cyclic", "n": 5}],
    "ve": [C4, D4, {"kind": "o", "dim": 3}, {"kind": "so", "dim": 2}, {"kind": "permutation", "n": 3}],
    "distance_ve": [{"kind": "permutation", "n": 4, "feature_ndim": 0}],  # relabelling edges
}


def _small_support(group, gen):
    """Atoms of p_0 kept small for speed: 1x4x4 images for image groups, the group's own points otherwise."""
    if group.event_ndim == 3:
        return torch.randn((2, 1, 4, 4), generator=gen, dtype=torch.float64)
    return None


def _process_for(spec, group):
    """The example process, its samples made of one group point (event_ndim matched where the spec has it)."""
    fields = spec.model_dump()
    if "event_ndim" in fields:
        fields["event_ndim"] = group.event_ndim
    return gd.build(fields)


@pytest.mark.parametrize("spec", registered_examples(gd.Process))
def test_registered_processes_satisfy_the_invariance_conditions(spec):
    process = gd.build(spec)
    if getattr(process, "manifold", None) is not None:
        pytest.skip("a manifold process: the paper's conditions are stated on R^d")
    if type(process).example_context is not gd.Process.example_context:
        # e.g. ou_gp: the law of the values depends on their inputs, and a symmetry acts on (inputs, values)
        # jointly; that is the kernel's equivariance, checked by check_kernel on every registered kernel
        pytest.skip(f"{spec.kind}: a process conditioned on context, outside the fixed-state-space conditions")
    assert spec.kind in INVARIANCE_GROUPS, f"declare the groups under which {spec.kind!r} preserves invariance"
    for group_spec in INVARIANCE_GROUPS[spec.kind]:
        group = gd.build(group_spec)
        process = _process_for(spec, group)
        x0 = _small_support(group, torch.Generator().manual_seed(0))
        if spec.kind == "distance_ve":
            x0 = 1.0 + torch.rand((2, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # distances > 0
        check_invariance_conditions(process, group, x0=x0, sufficient=True, dtype=torch.float64)


def test_vp_invariance_conditions_hold_in_float32():
    group = gd.build(C4)
    process = gd.build({"kind": "vp", "event_ndim": 3})
    x0 = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    check_invariance_conditions(process, group, x0=x0, sufficient=True, dtype=torch.float32)


_SHIFT = (0.5, 1.5)


class ShiftedVE(gd.VEProcess, register=False):
    """VE plus a fixed, non-invariant drift c (a ramp over the last axis): marginal N(x0 + c t, sigma_t^2 I)."""

    @staticmethod
    def shift(x):
        return torch.linspace(*_SHIFT, x.shape[-1], dtype=x.dtype)

    def drift(self, x, t):
        return torch.ones_like(x) * self.shift(x)

    def marginal(self, x0, t):
        t = self.check_inputs(x0, t, name="x0")
        return DiagonalGaussian(x0 + self.shift(x0) * t, self.std(t), self.event_ndim)


class AnisotropicVE(gd.VEProcess, register=False):
    """VE with diagonal, anisotropic noise G = g(t) diag(a), a a ramp over the last axis: N(x0, sigma_t^2 diag(a^2))."""

    @staticmethod
    def scales(n, dtype):
        return torch.linspace(0.5, 2.0, n, dtype=dtype)

    def diffusion(self, t):
        t = torch.as_tensor(t)
        return super().diffusion(t) * self.scales(self.width, t.dtype)

    def marginal(self, x0, t):
        t = self.check_inputs(x0, t, name="x0")
        return DiagonalGaussian(x0, self.std(t) * self.scales(x0.shape[-1], x0.dtype), self.event_ndim)


class RotatingVE(gd.VEProcess, register=False):
    r"""VE plus the rotation drift :math:`\omega J x` in the plane: marginal :math:`N(e^{\omega J t} x_0, \sigma_t^2 I)`.
    :math:`J x` commutes with rotations but anticommutes with reflections."""

    omega = 3.0

    def drift(self, x, t):
        return self.omega * torch.stack([-x[..., 1], x[..., 0]], -1)

    def marginal(self, x0, t):
        t = self.check_inputs(x0, t, name="x0")
        c, s = torch.cos(self.omega * t), torch.sin(self.omega * t)
        mean = torch.stack([c[..., 0] * x0[..., 0] - s[..., 0] * x0[..., 1], s[..., 0] * x0[..., 0] + c[..., 0] * x0[..., 1]], -1)
        return DiagonalGaussian(mean, self.std(t), self.event_ndim)


@pytest.mark.parametrize("group_spec", [C4, {"kind": "so", "dim": 2}, {"kind": "cyclic", "n": 4}])
def test_fixed_non_invariant_shift_breaks_both_conditions(group_spec):
    group = gd.build(group_spec)
    process = ShiftedVE(event_ndim=group.event_ndim)
    x0 = _small_support(group, torch.Generator().manual_seed(0))
    errors = invariance_condition_errors(process, group, x0=x0)
    assert errors["drift equivariance f(g x, t) = g f(x, t) (sufficient)"] > 0.1
    assert errors["marginal invariance p_t(g x) = p_t(x)"] > 0.1
    if group.finite:  # an orbit of atoms; an infinite group only has the origin, where the test is the marginal's
        assert errors["ODE drift defect in [0]_{p_t}: div(p_t v_g) = 0 (necessary and sufficient)"] > 0.01
    with pytest.raises(CheckError, match="necessary and sufficient|marginal invariance"):
        check_invariance_conditions(process, group, x0=x0)


@pytest.mark.parametrize("group_spec", [C4, {"kind": "so", "dim": 2}, {"kind": "o", "dim": 3}])
def test_anisotropic_diffusion_is_rejected_under_rotations(group_spec):
    group = gd.build(group_spec)
    process = AnisotropicVE(event_ndim=group.event_ndim)
    x0 = _small_support(group, torch.Generator().manual_seed(0))
    process.width = (x0 if x0 is not None else group.random_points(1)).shape[-1]
    errors = invariance_condition_errors(process, group, x0=x0)
    assert errors["diffusion G G^T = g G G^T g^T (sufficient)"] > 0.1
    assert errors["drift equivariance f(g x, t) = g f(x, t) (sufficient)"] == 0.0  # the drift is fine
    assert errors["marginal invariance p_t(g x) = p_t(x)"] > 0.1
    with pytest.raises(CheckError):
        check_invariance_conditions(process, group, x0=x0)


def test_condition_is_necessary_and_sufficient_not_pointwise():
    # J x is not D_4-equivariant (reflections flip it), yet from an isotropic start (the origin) its defect
    # v_g = -2 J x transports every isotropic p_t into itself: div(p v) = 0, and p_t stays invariant
    group = gd.build({"kind": "dihedral", "n": 4})
    process = RotatingVE()
    origin = torch.zeros((1, 2), dtype=torch.float64)
    check_invariance_conditions(process, group, x0=origin)
    with pytest.raises(CheckError, match="drift equivariance"):
        check_invariance_conditions(process, group, x0=origin, sufficient=True)
    # from an orbit of points the rotation carries the mixture off its reflection symmetry
    with pytest.raises(CheckError, match="necessary and sufficient"):
        check_invariance_conditions(process, group)


def test_invariance_check_rejects_what_the_theorem_does_not_cover():
    process = gd.build({"kind": "vp"})
    with pytest.raises(ValueError, match="affinely"):
        invariance_condition_errors(process, gd.build({"kind": "translation", "dim": 2}))
    with pytest.raises(ValueError, match="invariant"):
        invariance_condition_errors(process, gd.build({"kind": "so", "dim": 2}), x0=torch.ones((1, 2), dtype=torch.float64))
    with pytest.raises(ValueError, match="event_ndim"):
        invariance_condition_errors(gd.build({"kind": "vp", "event_ndim": 2}), gd.build({"kind": "so", "dim": 2}))


# --- weight-tied group convolutions --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_spec", [C4, D4])
def test_lifting_and_group_convolutions_commute_with_the_regular_representation(group_spec, dtype):
    torch.manual_seed(0)
    group = gd.build(group_spec)
    lift, conv, norm = LiftingConv2d(group, 2, 3).to(dtype), GroupConv2d(group, 3, 4).to(dtype), GroupNorm(2, 4).to(dtype)
    x = torch.randn(2, 2, 8, 8, dtype=dtype)
    f = lift(x)
    y = norm(conv(f))
    tol = tolerance(dtype, "equivariance")
    for h in group.elements():
        torch.testing.assert_close(lift(group.act(h, x)), act_on_group_features(group, h, f), atol=tol, rtol=0)
        hf = act_on_group_features(group, h, f)
        torch.testing.assert_close(norm(conv(hf)), act_on_group_features(group, h, y), atol=tol, rtol=0)
        torch.testing.assert_close(
            GroupPool()(act_on_group_features(group, h, y)), group.act(h, GroupPool()(y)), atol=tol, rtol=0
        )
        hy = act_on_group_features(group, h, y)
        torch.testing.assert_close(group_avg_pool2d(hy), act_on_group_features(group, h, group_avg_pool2d(y)), atol=tol, rtol=0)
        torch.testing.assert_close(group_upsample2d(hy), act_on_group_features(group, h, group_upsample2d(y)), atol=tol, rtol=0)


def test_group_convolution_input_errors():
    group = gd.build(C4)
    with pytest.raises(ValueError, match="odd"):
        LiftingConv2d(group, 1, 2, kernel_size=4)
    with pytest.raises(ValueError, match="images"):
        GroupConv2d(gd.build({"kind": "cyclic", "n": 4}), 1, 2)
    with pytest.raises(ValueError, match="even"):
        group_avg_pool2d(torch.zeros(1, 1, 4, 5, 5))
    with pytest.raises(ValidationError, match="image_size"):
        EquivariantUNet(**{**TINY, "image_size": 6, "channels": (4, 8, 8)})
    with pytest.raises(ValidationError, match="norm_groups"):
        UNet(**{**TINY, "norm_groups": 3})


# --- U-Nets and frame averaging ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_spec", [C4, D4])
def test_weight_tied_unet_is_exactly_equivariant(group_spec, dtype):
    torch.manual_seed(0)
    model = EquivariantUNet(**TINY, image_channels=2, group=group_spec).to(dtype)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=dtype)
    errors = equivariance_errors(lambda z: model(t, z), model.group, x, output="vector")
    # relative round-off of reordered sums: within 1e-6 in float32
    assert max(errors.values()) <= (1e-6 if dtype == torch.float32 else 1e-12)
    assert model(t, x).abs().mean() > 1e-2  # a non-trivial output, so the identity is not vacuous


def test_plain_unet_is_not_equivariant_but_its_frame_average_is():
    torch.manual_seed(0)
    plain = UNet(**TINY)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((3,), 0.4)
    for group_spec in (C4, D4):
        group = gd.build(group_spec)
        assert max(equivariance_errors(lambda z: plain(t, z), group, x).values()) > 0.1
        averaged = gd.FrameAveraged.wrap(plain, group)
        check_equivariant(lambda z, m=averaged: m(t, z), group, x, atol=1e-6)
    fa64 = gd.FrameAveraged.wrap(UNet(**TINY).double(), gd.build(D4))
    check_equivariant(lambda z: fa64(t.double(), z), fa64.group, x.double())


# --- equivariant noise and equivariant trajectories ----------------------------------------------------


def test_frame_and_noise_are_equivariant():
    group = gd.build(D4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=gen)
    noise = torch.randn(16, 1, 8, 8, generator=gen)
    reference = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64)
    z = equivariant_noise(group, x, noise, reference)
    h = frame_elements(group, x, reference)
    for g in group.elements():
        gx = group.act(g, x)
        assert bool((frame_elements(group, gx, reference) == group.compose(g, h)).all())
        torch.testing.assert_close(equivariant_noise(group, gx, noise, reference), group.act(g, z), atol=0, rtol=0)


def test_equivariant_noise_is_standard_normal_and_independent_of_the_state():
    # z = h(x) . eps with eps independent of x: N(0, I), and uncorrelated with x (a frame chosen from eps
    # itself would bias z towards x); z-scores of the mean, variance and <z, x> over 20000 draws
    group = gd.build({"kind": "dihedral", "n": 4})
    gen = torch.Generator().manual_seed(0)
    n = 20000
    x = 1.0 + torch.randn(n, 2, generator=gen, dtype=torch.float64)
    z = equivariant_noise(
        group, x, torch.randn(n, 2, generator=gen, dtype=torch.float64), torch.tensor([0.3, -1.1], dtype=torch.float64)
    )
    se = 1.0 / n**0.5
    assert float(z.mean(0).abs().max()) < 5 * se
    assert float((z.var(0) - 1).abs().max()) < 5 * 2**0.5 * se
    corr = (z * (x - x.mean(0))).sum(-1)
    assert float(corr.mean().abs()) < 5 * float(corr.std()) * se


def _delta_x0(score, group, sampler, elements, x_T):
    """Delta x0 = max over g of mean |x0(g x_T) - g x0(x_T)|, same generator seed for every run."""
    process = gd.build({"kind": "vp", "event_ndim": 3})
    with torch.no_grad():
        x0 = sampler.sample(score, process, x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(7))
        worst = 0.0
        for g in elements:
            x0_g = sampler.sample(score, process, x_T.shape, x_T=group.act(g, x_T), generator=torch.Generator().manual_seed(7))
            worst = max(worst, float((x0_g - group.act(g, x0)).abs().mean()))
    return worst, float(x0.abs().mean())


@pytest.mark.parametrize(
    "name, group_spec", [("wt", C4), ("wt", D4), ("fa", C4), ("fa", D4)], ids=["wt-c4", "wt-d4", "fa-c4", "fa-d4"]
)
def test_sampling_trajectories_are_equivariant_with_equivariant_noise(name, group_spec):
    group = gd.build(group_spec)
    torch.manual_seed(0)
    small = {**TINY, "channels": (2, 4)}
    net = EquivariantUNet(**small, group=group_spec) if name == "wt" else gd.FrameAveraged.wrap(UNet(**small), group)

    # the untrained equivariant network perturbs the exact score -x of N(0, I) data, so states stay O(1)
    # and the absolute Delta x0 is meaningful
    def score(t, x):
        return net(t, x) - x

    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    elements = group.elements()[[1, -1]]  # a rotation, and for D_4 a reflection
    aligned = EquivariantNoiseSampler(group=group_spec, steps=15)
    delta, scale = _delta_x0(score, group, aligned, elements, x_T)
    assert scale > 0.1 and delta <= 1e-6
    ordinary = EquivariantNoiseSampler(group=group_spec, steps=15, equivariant_noise=False)
    assert _delta_x0(score, group, ordinary, elements, x_T)[0] > 0.1


def test_equivariant_noise_alone_does_not_make_a_plain_model_equivariant():
    group = gd.build(C4)
    torch.manual_seed(0)
    plain = UNet(**TINY)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    sampler = EquivariantNoiseSampler(group=C4, steps=10)
    assert _delta_x0(lambda t, x: plain(t, x) - x, group, sampler, group.elements()[1:2], x_T)[0] > 0.01


def test_equivariant_noise_sampler_rejects_infinite_groups_and_foreign_shapes():
    with pytest.raises(ValueError, match="finite group"):
        EquivariantNoiseSampler(group={"kind": "so", "dim": 2})
    sampler = EquivariantNoiseSampler(group=C4, steps=2)
    with pytest.raises(ValueError, match="C, H, W"):
        sampler.sample(lambda t, x: -x, gd.build({"kind": "vp"}), (4, 3))
