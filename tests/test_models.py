"""Score models: frame averaging is exactly equivariant for any model and finite group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import geodiffusion as gd
from geodiffusion.testing import check_equivariant, equivariance_errors


class TinyConv(gd.ScoreModel, register=False):
    """A plain (non-equivariant) CNN on [B, 1, H, W] images."""

    class Spec(gd.Spec):
        channels: int = 4

    def __init__(self, spec=None, /, **fields):
        super().__init__(spec, **fields)
        c = self.spec.channels
        self.net = nn.Sequential(nn.Conv2d(2, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, 1, 3, padding=1))

    def forward(self, t, x, **context):
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[-2:])
        return self.net(torch.cat([x, tt], 1))


@pytest.mark.parametrize("group", [gd.CyclicGroup(n=4, action="image"), gd.DihedralGroup(n=4, action="image")])
def test_frame_averaged_cnn_is_exactly_equivariant_on_images(group):
    torch.manual_seed(0)
    model = gd.FrameAveraged.wrap(TinyConv(), group)
    x = torch.randn(3, 1, 6, 6)
    t = torch.full((3,), 0.4)
    # rot90 and flips permute pixels exactly, so the error is float round-off of a reordered sum
    check_equivariant(lambda z: model(t, z), group, x, output="point")
    base = equivariance_errors(lambda z: model.model(t, z), group, x, output="point")
    assert max(base.values()) > 1e-2  # the unaveraged CNN is not equivariant


@pytest.mark.parametrize("group", [gd.CyclicGroup(n=7), gd.DihedralGroup(n=6)])
def test_frame_averaged_mlp_is_equivariant_in_float32(group):
    torch.manual_seed(0)
    model = gd.FrameAveraged.wrap(gd.TimeMLP(dim=2, hidden=64), group)
    x = torch.randn(32, 2)
    t = torch.rand(32)
    errors = equivariance_errors(lambda z: model(t, z), group, x)
    assert max(errors.values()) < 1e-5


def test_frame_averaging_of_an_equivariant_function_changes_nothing():
    group = gd.CyclicGroup(n=4)

    class Linear(gd.ScoreModel, register=False):
        def forward(self, t, x, **context):
            return -2.0 * x

    x = torch.randn(5, 2, dtype=torch.float64)
    fa = gd.FrameAveraged.wrap(Linear(), group)
    torch.testing.assert_close(fa(torch.zeros(5, dtype=torch.float64), x), -2.0 * x)


def test_wrap_shares_parameters_with_the_inner_model():
    mlp = gd.TimeMLP(dim=2)
    fa = gd.FrameAveraged.wrap(mlp, gd.CyclicGroup(n=3))
    assert fa.model is mlp
    assert {id(p) for p in fa.parameters()} == {id(p) for p in mlp.parameters()}


def test_frame_averaging_needs_a_finite_group():
    with pytest.raises(ValueError, match="finite group"):
        gd.FrameAveraged(model={"kind": "mlp", "dim": 3}, group={"kind": "so", "dim": 3})


def test_frame_averaging_repeats_batched_context():
    seen = {}

    class Spy(gd.ScoreModel, register=False):
        def forward(self, t, x, **context):
            seen.update({k: v.shape for k, v in context.items()})
            return x

    fa = gd.FrameAveraged.wrap(Spy(), gd.CyclicGroup(n=3))
    fa(torch.zeros(4), torch.randn(4, 2), label=torch.zeros(4, 7), scale=torch.tensor(2.0))
    assert seen == {"label": (12, 7), "scale": ()}


def test_set_transformer_is_permutation_equivariant_for_any_set_size():
    torch.manual_seed(0)
    model = gd.SetTransformer(dim=2, hidden=32, heads=4, n_points=4)
    for n in (3, 9):
        group = gd.Permutations(n=n)
        x = torch.randn(2, n, 2)
        t = torch.full((2,), 0.5)
        check_equivariant(lambda z, t=t: model(t, z), group, x, output="point")


def test_noise_predictor_divides_by_minus_sigma():
    process = gd.VPProcess()
    net = gd.TimeMLP(dim=2).double()
    model = gd.NoisePredictor(net=net.spec, process=process.spec).double()
    model.net.load_state_dict(net.state_dict())
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.2, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(model(t, x), -net(t, x) / process.std(t)[:, None])


def test_models_reject_wrong_input_shapes():
    with pytest.raises(ValueError, match=r"expected x of shape \[B, 3\]"):
        gd.TimeMLP(dim=3)(torch.zeros(2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="expected x of shape"):
        gd.SetTransformer(dim=2)(torch.zeros(2), torch.zeros(2, 2))
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="time_embedding_dim"):
        gd.TimeMLP(dim=2, time_embedding_dim=7)
    with pytest.raises(ValueError, match="divisible"):
        gd.SetTransformer(dim=2, hidden=10, heads=4)


def test_sin_activation_builds_every_kind_of_mlp_with_it():
    from geodiffusion.models.layers import activation

    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    assert torch.equal(activation("sin")(x), torch.sin(x))
    model = gd.build(
        {"kind": "tangent_mlp", "manifold": {"kind": "sphere", "dim": 2}, "activation": "sin", "hidden": 8, "depth": 2}
    )
    assert any(type(m).__name__ == "Sin" for m in model.modules())
    x0 = torch.nn.functional.normalize(torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = model(torch.full((5,), 0.3), x0)
    # a tangent vector field: orthogonal to the point
    assert float((out * x0).sum(-1).abs().max()) < 1e-5


def test_building_a_tangent_mlp_draws_only_its_weights_from_the_global_rng(monkeypatch):
    """The complex-or-real probe of the manifold uses its own generator: a model built under torch.manual_seed(s)
    has the weights any other user of that seed would expect, whatever the manifold's sampler draws."""
    from geodiffusion.manifolds.sphere import Sphere

    calls = []
    original = Sphere.random_point

    def spy(self, n, generator=None, **kwargs):
        calls.append(generator)
        return original(self, n, generator, **kwargs)

    monkeypatch.setattr(Sphere, "random_point", spy)
    gd.build({"kind": "tangent_mlp", "manifold": {"kind": "sphere", "dim": 2}}, gd.ScoreModel)
    assert calls and all(g is not None for g in calls)
