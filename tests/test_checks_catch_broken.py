"""Every check can fail: each is shown a deliberately broken class and must reject it."""

from __future__ import annotations

import math

import pytest
import torch

import geodiffusion as gd
from geodiffusion.testing import (
    CheckError,
    check_equivariant,
    check_group,
    check_heat_kernel,
    check_kernel,
    check_manifold,
    check_process,
    check_sampler,
)

# --- groups ----------------------------------------------------------------


class ComposeReversed(gd.SpecialOrthogonal, register=False):
    """compose(g, h) = hg: still a group (the opposite group) but the action is no longer a homomorphism."""

    def compose(self, g, h):
        return h @ g


class WrongAngle(gd.CyclicGroup, register=False):
    """Rotates by 2 pi k / (n + 1): the action forgets that r^n = e."""

    def act(self, g, x):
        angle = g.to(x.dtype) * (2 * math.pi / (self.spec.n + 1))
        c, s = torch.cos(angle), torch.sin(angle)
        return torch.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1]], -1)


class BadInverse(gd.Translations, register=False):
    def inverse(self, g):
        return g


class NotAssociative(gd.CyclicGroup, register=False):
    def compose(self, g, h):
        return (g + 2 * h) % self.spec.n


@pytest.mark.parametrize(
    ("group", "identity"),
    [
        (ComposeReversed(dim=3), "homomorphism"),
        (WrongAngle(n=5), "homomorphism"),
        (BadInverse(dim=2), "inverse"),
        (NotAssociative(n=5), "associativity"),
    ],
)
def test_check_group_catches_broken_groups(group, identity):
    with pytest.raises(CheckError, match=identity):
        check_group(group)


# --- manifolds -------------------------------------------------------------


class DoubleStepEuclidean(gd.Euclidean, register=False):
    def exp(self, x, v):
        return x + 2 * v


class ProjectionNotIdempotent(gd.Euclidean, register=False):
    def proj(self, x, v):
        return 0.5 * v


@pytest.mark.parametrize(
    ("manifold", "identity"),
    [(DoubleStepEuclidean(dim=3), r"exp_x\(log_x y\) = y"), (ProjectionNotIdempotent(dim=2), "idempotent")],
)
def test_check_manifold_catches_broken_manifolds(manifold, identity):
    with pytest.raises(CheckError, match=identity):
        check_manifold(manifold)


# --- heat kernels ----------------------------------------------------------


class TwiceTheTime(gd.EuclideanHeatKernel, register=False):
    """A normalised Gaussian with variance 2t: solves d/dt p = Laplacian p, not the Laplacian / 2."""

    def log_prob(self, x0, x, t):
        return super().log_prob(x0, x, 2 * torch.as_tensor(t, dtype=x.dtype))

    def score(self, x0, x, t):
        return super().score(x0, x, 2 * torch.as_tensor(t, dtype=x.dtype))

    def sample(self, x0, t, generator=None):
        return super().sample(x0, 2 * torch.as_tensor(t, dtype=x0.dtype), generator)


class Unnormalised(gd.EuclideanHeatKernel, register=False):
    def log_prob(self, x0, x, t):
        return super().log_prob(x0, x, t) + 0.2


class SamplerTooWide(gd.EuclideanHeatKernel, register=False):
    def sample(self, x0, t, generator=None):
        return super().sample(x0, 1.3 * torch.as_tensor(t, dtype=x0.dtype), generator)


class Anisotropic(gd.EuclideanHeatKernel, register=False):
    """N(x0, t Sigma), Sigma = diag(2, 1/2): symmetric, normalised, a semigroup and sampled exactly, but not
    rotation invariant. It is Brownian motion of another metric, so it also misses this metric's heat equation: a
    positive solution started from a point mass is unique, hence invariant, and no kernel breaks only invariance."""

    def _sqrt_sigma(self, like):
        return torch.tensor([2.0, 0.5], dtype=like.dtype).sqrt()

    def log_prob(self, x0, x, t):
        # x = Sigma^{1/2} u with u ~ N(u0, t I): change of variables
        s = self._sqrt_sigma(x)
        return super().log_prob(x0 / s, x / s, t) - torch.log(s).sum()

    def score(self, x0, x, t):
        s = self._sqrt_sigma(x)
        return super().score(x0 / s, x / s, t) / s

    def sample(self, x0, t, generator=None):
        s = self._sqrt_sigma(x0)
        return s * super().sample(x0 / s, t, generator)


class TimeShifted(gd.EuclideanHeatKernel, register=False):
    """p_{t + 1/4}: symmetric, normalised, invariant, sampled exactly and a solution of the heat equation, but it
    starts from p_{1/4} instead of a point mass, so p_s * p_t = p_{s + t + 1/4} is not p_{s + t}."""

    def log_prob(self, x0, x, t):
        return super().log_prob(x0, x, torch.as_tensor(t, dtype=x.dtype) + 0.25)

    def score(self, x0, x, t):
        return super().score(x0, x, torch.as_tensor(t, dtype=x.dtype) + 0.25)

    def sample(self, x0, t, generator=None):
        return super().sample(x0, torch.as_tensor(t, dtype=x0.dtype) + 0.25, generator)


@pytest.mark.parametrize(
    ("cls", "identity"),
    [
        (TwiceTheTime, "heat equation"),
        (Unnormalised, "normalisation"),
        (SamplerTooWide, "sample matches log_prob"),
        (Anisotropic, "isometry invariance"),
        (TimeShifted, "semigroup"),
    ],
)
def test_check_heat_kernel_catches_broken_kernels(cls, identity):
    with pytest.raises(CheckError, match=identity):
        check_heat_kernel(cls(manifold={"kind": "euclidean", "dim": 2}))


_HEAT_IDENTITIES = ("symmetry", "score = grad log p", "heat equation", "normalisation", "sample matches", "isometry", "semigroup")


@pytest.mark.parametrize(("cls", "broken"), [(TimeShifted, {"semigroup"}), (Anisotropic, {"isometry", "heat equation"})])
def test_semigroup_and_isometry_checks_catch_what_the_other_identities_miss(cls, broken):
    with pytest.raises(CheckError) as info:
        check_heat_kernel(cls(manifold={"kind": "euclidean", "dim": 2}))
    violated = str(info.value).split(" violates ", 1)[1]
    assert {name for name in _HEAT_IDENTITIES if name in violated} == broken, violated


# --- kernels ---------------------------------------------------------------


class Asymmetric(gd.SquaredExponential, register=False):
    def __call__(self, x1, x2):
        return super().__call__(x1, x2) * (1 + 0.5 * torch.tanh(x1[..., :, None, :1, None]))


class NegativeDefinite(gd.SquaredExponential, register=False):
    def __call__(self, x1, x2):
        return -super().__call__(x1, x2)


class LinearKernel(gd.SquaredExponential, register=False):
    """x . x' + 1 is PSD and symmetric but not translation invariant, so not E(n)-equivariant."""

    def __call__(self, x1, x2):
        k = x1 @ x2.transpose(-1, -2) + 1
        return k[..., None, None] * torch.eye(self.output_dim, dtype=k.dtype)


@pytest.mark.parametrize(
    ("kernel", "identity"),
    [(Asymmetric(), "symmetry"), (NegativeDefinite(), "positive semi-definite"), (LinearKernel(input_dim=2), "equivariance")],
)
def test_check_kernel_catches_broken_kernels(kernel, identity):
    with pytest.raises(CheckError, match=identity):
        check_kernel(kernel)


# --- processes -------------------------------------------------------------


class DriftSignFlipped(gd.VPProcess, register=False):
    def drift(self, x, t):
        return -super().drift(x, t)


class WrongDiffusion(gd.VEProcess, register=False):
    def diffusion(self, t):
        return 1.1 * super().diffusion(t)


class PriorTooWide(gd.VPProcess, register=False):
    @property
    def prior_std(self):
        return 1.5


class ScoreSignFlipped(gd.SubVPProcess, register=False):
    def marginal(self, x0, t):
        law = super().marginal(x0, t)
        law.score = lambda x, law=law: -gd.processes.DiagonalGaussian.score(law, x)
        return law


@pytest.mark.parametrize(
    ("process", "identity"),
    [
        (DriftSignFlipped(), "Fokker-Planck"),
        (WrongDiffusion(), "Fokker-Planck"),
        (PriorTooWide(), "KL"),
        (ScoreSignFlipped(), "grad log marginal"),
    ],
)
def test_check_process_catches_broken_processes(process, identity):
    with pytest.raises(CheckError, match=identity):
        check_process(process)


# --- equivariance ----------------------------------------------------------


def test_check_equivariant_catches_an_unconstrained_mlp():
    torch.manual_seed(0)
    model = gd.TimeMLP(dim=2, hidden=16, depth=2)
    group = gd.CyclicGroup(n=4)
    x = torch.randn(8, 2)
    t = torch.full((8,), 0.5)
    with pytest.raises(CheckError, match="equivariance"):
        check_equivariant(lambda z: model(t, z), group, x)


def test_check_equivariant_catches_wrong_output_transformation():
    """A rotation-invariant function checked as if its output were a vector."""
    group = gd.SpecialOrthogonal(dim=3)
    x = torch.randn(6, 3, dtype=torch.float64)
    fn = lambda z: (z**2).sum(-1, keepdim=True).expand(-1, 3)  # noqa: E731
    check_equivariant(fn, group, x, output="invariant")
    with pytest.raises(CheckError):
        check_equivariant(fn, group, x, output="vector")


# --- samplers --------------------------------------------------------------


class ForgetsHalf(gd.SDESampler, register=False):
    """Uses the probability-flow drift f - g^2 s / 2 with SDE noise: samples come out too wide."""

    def sample(self, score, process, shape, **kwargs):
        return super().sample(lambda t, x: 0.5 * score(t, x), process, shape, **kwargs)


class StopsEarly(gd.ProbabilityFlowSampler, register=False):
    """Integrates only to t = 0.3 while claiming to reach eps."""

    def sample(self, score, process, shape, **kwargs):
        return gd.ProbabilityFlowSampler(eps=0.3).sample(score, process, shape, **kwargs)


@pytest.mark.parametrize("sampler", [ForgetsHalf(steps=200), StopsEarly()])
def test_check_sampler_catches_broken_samplers(sampler):
    with pytest.raises(CheckError, match="z-score"):
        check_sampler(sampler, gd.VPProcess())
