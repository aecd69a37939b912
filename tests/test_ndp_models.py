"""Function-space score networks: NDP bi-dimensional attention, the E(n)-equivariant EGNN, the MLP baseline."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import geodiffusion as gd
from geodiffusion.groups import EuclideanGroup, Permutations
from geodiffusion.models import BiDimensionalAttention, EGNNScore, FieldGraphGroup, FunctionMLP, GPResidualScore
from geodiffusion.testing import CheckError, check_equivariant, equivariance_errors, tolerance


def _pairs(batch: int, n: int, d_in: int, d_out: int, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, d_in, generator=gen, dtype=dtype), torch.randn(batch, n, d_out, generator=gen, dtype=dtype)


@pytest.mark.parametrize("dim", [2, 3])
def test_egnn_score_commutes_with_random_isometries_and_permutations_in_float32(dim):
    torch.manual_seed(0)
    model = EGNNScore(input_dim=dim, output_dim=dim, hidden=16, channels=3, layers=2, rbf=4)
    x, y = _pairs(3, 6, dim, dim)
    t = torch.tensor([0.1, 0.5, 0.9])
    out = model(t, y, inputs=x)
    group = EuclideanGroup(dim=dim)
    gen = torch.Generator().manual_seed(1)
    for g in group.sample(4, gen):
        rot, shift = g[:dim, :dim], g[:dim, dim]
        moved = model(t, y @ rot.T, inputs=x @ rot.T + shift)
        err = (moved - out @ rot.T).abs().max() / out.abs().max().clamp_min(1.0)
        assert err < tolerance(torch.float32, "equivariance"), err
    perm = torch.randperm(6, generator=gen)
    torch.testing.assert_close(model(t, y[:, perm], inputs=x[:, perm]), out[:, perm], atol=1e-6, rtol=0)


def test_egnn_claims_the_joint_action_on_graphs_and_check_equivariant_verifies_it():
    model = EGNNScore(hidden=8, channels=2, layers=1, rbf=3).double()
    assert isinstance(model.group, FieldGraphGroup) and isinstance(model.group.base, EuclideanGroup)
    z = model.example_input(4, torch.Generator().manual_seed(0)).double()
    t = torch.full((4,), 0.4, dtype=torch.float64)
    check_equivariant(lambda v: model(t, v), model.group, z, output="vector", n=6)


def test_egnn_layer_computes_the_documented_messages():
    """The layer against its formula written edge by edge: m_ij = phi_e(h_i, h_j, rbf_ij, r_ij^T V_i, r_ij^T V_j,
    V_i^T V_j), mean aggregation; the layer applies phi_e's h-blocks per node, which must not change the result."""
    from geodiffusion.models.egnn import EGNNLayer

    torch.manual_seed(0)
    layer = EGNNLayer(hidden=6, channels=3, rbf=4, act="silu").double()
    gen = torch.Generator().manual_seed(1)
    nodes, n = 5, 3
    h, v, pos = (torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((nodes, 6), (nodes, n, 3), (nodes, n)))
    edge_index = torch.tensor([[1, 2, 3, 0, 4, 2], [0, 0, 1, 2, 2, 3]])  # j -> i; node 4 receives nothing
    rbf = torch.randn(edge_index.shape[1], 4, generator=gen, dtype=torch.float64)
    h_new, v_new = layer(h, v, pos, edge_index, rbf)
    m_sum, dv_sum, count = torch.zeros(nodes, 6, dtype=torch.float64), torch.zeros(nodes, n, 3, dtype=torch.float64), [0] * nodes
    for e, (j, i) in enumerate(edge_index.T.tolist()):
        r = pos[i] - pos[j]
        inv = torch.cat([h[i], h[j], rbf[e], r @ v[i], r @ v[j], (v[i].T @ v[j]).flatten()])
        m = layer.phi_e(inv)
        a_r, a_v = torch.tanh(layer.phi_vec(m)).chunk(2)
        m_sum[i] += m
        dv_sum[i] += torch.outer(r, a_r) + v[j] * a_v
        count[i] += 1
    scale = torch.tensor([1 / max(c, 1) for c in count], dtype=torch.float64)
    m_mean, dv_mean = m_sum * scale[:, None], dv_sum * scale[:, None, None]
    torch.testing.assert_close(h_new, h + layer.phi_h(torch.cat([h, m_mean], -1)), atol=1e-12, rtol=0)
    torch.testing.assert_close(v_new, layer.mix(v) + dv_mean, atol=1e-12, rtol=0)


def test_egnn_grows_at_most_linearly_in_the_values():
    """Bounded gates: |s(t, x, lambda y)| = O(lambda), so the probability flow cannot blow up in finite time (with
    ungated gates the output is a polynomial of degree up to 3^layers in y: 3e89 at lambda = 100 here)."""
    torch.manual_seed(0)
    model = EGNNScore(hidden=16, channels=4, layers=4, rbf=4).double()
    x, y = _pairs(3, 6, 2, 2, dtype=torch.float64)
    t = torch.full((3,), 0.5, dtype=torch.float64)
    with torch.no_grad():
        norms = [float(model(t, lam * y, inputs=x).norm()) for lam in (1e2, 1e3, 1e4)]
    assert norms[1] / norms[0] < 12 and norms[2] / norms[1] < 12, norms


class _AbsolutePositionEGNN(EGNNScore, register=False):
    """Broken on purpose: adds the raw inputs to the score, which breaks translation invariance."""

    def score(self, t, inputs, values):
        return super().score(t, inputs, values) + 0.1 * inputs


def test_check_equivariant_catches_a_network_that_sees_absolute_positions():
    model = _AbsolutePositionEGNN(hidden=8, channels=2, layers=1, rbf=3)
    z = model.example_input(3, torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.4)
    with pytest.raises(CheckError, match="equivariance"):
        check_equivariant(lambda v: model(t, v), model.group, z, output="vector")


def test_bidim_attention_is_permutation_equivariant_over_points_and_invariant_to_input_dimension_order():
    torch.manual_seed(0)
    model = BiDimensionalAttention(input_dim=3, output_dim=2, hidden=8, heads=2, layers=2, n_points=4)
    x, y = _pairs(2, 4, 3, 2, dtype=torch.float64)
    model = model.double()
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    z = torch.cat([x, y], -1)
    check_equivariant(lambda v: model(t, v), Permutations(n=4), z, output="vector")
    dims = torch.tensor([2, 0, 1])
    torch.testing.assert_close(model(t, y, inputs=x[..., dims]), model(t, y, inputs=x), atol=1e-12, rtol=0)


def test_translation_invariant_bidim_attention_ignores_shifts_of_the_inputs_and_keeps_permutations():
    torch.manual_seed(0)
    kwargs = {"input_dim": 2, "output_dim": 1, "hidden": 8, "heads": 2, "layers": 2, "n_points": 5}
    invariant = BiDimensionalAttention(**kwargs, translation_invariant=True).double()
    plain = BiDimensionalAttention(**kwargs).double()
    plain.load_state_dict(invariant.state_dict())  # the same weights: only the centring differs
    assert isinstance(invariant.group, FieldGraphGroup) and invariant.group.base.kind == "translation"
    x, y = _pairs(3, 5, 2, 1, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    z = torch.cat([x, y], -1)
    check_equivariant(lambda v: invariant(t, v), invariant.group, z, output="vector")
    check_equivariant(lambda v: invariant(t, v), Permutations(n=5), z, output="vector")
    shift = torch.tensor([3.0, -1.5], dtype=torch.float64)
    torch.testing.assert_close(invariant(t, y, inputs=x + shift), invariant(t, y, inputs=x), atol=1e-12, rtol=0)
    # centred inputs are what the plain network sees for them; it is not invariant itself
    torch.testing.assert_close(invariant(t, y, inputs=x), plain(t, y, inputs=x - x.mean(1, keepdim=True)), atol=1e-12, rtol=0)
    with pytest.raises(CheckError, match="equivariance"):
        check_equivariant(lambda v: plain(t, v), invariant.group, z, output="vector")


@pytest.mark.parametrize("frequencies", [0, 3])
def test_relative_bias_enters_each_head_of_the_attention_across_points(frequencies):
    """The pair bias beta_{lh}(x_ik - x_jk) is added to head h's logits of layer l, for sequence (b, k): checked
    against attention written out by hand, per batch item, input dimension and head; with Fourier features the
    MLP reads [D, cos(w D), sin(w D)]."""
    torch.manual_seed(0)
    model = BiDimensionalAttention(
        input_dim=2, output_dim=1, hidden=8, heads=2, layers=2, n_points=4, relative_bias=6, relative_bias_frequencies=frequencies
    )
    model = model.double()
    x, y = _pairs(3, 4, 2, 1, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    block, heads, dh = model.blocks[0], 2, 4
    z = model.embed(torch.cat([x.unsqueeze(-1), y.unsqueeze(2).expand(3, 4, 2, 1)], -1))
    z = z + block.time(model.time_embedding(t))[:, None, None, :]
    diff = x.unsqueeze(2) - x.unsqueeze(1)  # [b, i, j, k]
    features = [diff.unsqueeze(-1)]
    if frequencies:
        w = model.pair_frequencies
        assert w.requires_grad and w.shape == (frequencies,)
        features += [torch.cos(diff.unsqueeze(-1) * w), torch.sin(diff.unsqueeze(-1) * w)]
    beta = model.pair_bias(torch.cat(features, -1))[..., :heads]  # layer 0's heads
    att = block.across_points
    q, k, v = (
        nn.functional.linear(z, w, bb) for w, bb in zip(att.in_proj_weight.chunk(3), att.in_proj_bias.chunk(3), strict=True)
    )
    out = torch.zeros_like(z)
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        logits = torch.einsum("bikc,bjkc->bkij", q[..., sl], k[..., sl]) / dh**0.5 + beta[..., h].permute(0, 3, 1, 2)
        out[..., sl] = torch.einsum("bkij,bjkc->bikc", logits.softmax(-1), v[..., sl])
    expected = att.out_proj(out)
    got = []
    handle = att.register_forward_hook(lambda mod, args, res: got.append(res[0]) and None)  # None: keep the output
    model(t, y, inputs=x)
    handle.remove()
    torch.testing.assert_close(got[0].reshape(3, 2, 4, 8).transpose(1, 2), expected, atol=1e-12, rtol=0)
    # permutations of the points and of the input dimensions keep their symmetries
    check_equivariant(lambda w: model(t, w), Permutations(n=4), torch.cat([x, y], -1), output="vector")
    torch.testing.assert_close(model(t, y, inputs=x[..., [1, 0]]), model(t, y, inputs=x), atol=1e-12, rtol=0)
    with pytest.raises(ValidationError, match="relative_bias_frequencies"):
        BiDimensionalAttention(relative_bias_frequencies=2)


@pytest.mark.parametrize("parametrisation", ["kernel_preconditioned", "plain", "st_preconditioned"])
def test_gp_residual_score_is_the_network_over_sigma_plus_the_limit_output(parametrisation):
    torch.manual_seed(0)
    spec = GPResidualScore.examples()[0]
    scaling = parametrisation != "st_preconditioned"  # st's target -xi is O(1) already: the std trick is refused
    spec = spec.model_copy(
        update={
            "process": spec.process.model_copy(update={"parametrisation": parametrisation, "mean": 0.2}),
            "std_scaling": scaling,
        }
    )
    model = gd.build(spec).double()
    x, y = _pairs(3, 4, 1, 1, dtype=torch.float64)
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    sigma = model.process.std(t)[:, None, None] if scaling else torch.ones(())
    limit = model.process.limit_output(y, t, inputs=x)
    torch.testing.assert_close(model(t, y, inputs=x), model.network(t, y, inputs=x) / sigma + limit, atol=1e-12, rtol=0)
    # each trick alone
    if scaling:
        scaled_only = gd.build(spec.model_copy(update={"residual": False})).double()
        scaled_only.load_state_dict(model.state_dict())
        torch.testing.assert_close(scaled_only(t, y, inputs=x), model.network(t, y, inputs=x) / sigma, atol=1e-12, rtol=0)
    residual_only = gd.build(spec.model_copy(update={"std_scaling": False})).double()
    residual_only.load_state_dict(model.state_dict())
    torch.testing.assert_close(residual_only(t, y, inputs=x), model.network(t, y, inputs=x) + limit, atol=1e-12, rtol=0)
    # with the network at zero the output is the limit's: the exact score when the data are the limit GP itself
    for p in model.network.head[-1].parameters():
        torch.nn.init.zeros_(p)
    law = model.process.prior(y.shape, inputs=x, dtype=torch.float64)
    y_lim = law.sample(torch.Generator().manual_seed(1))
    expected = model.process.output_from_score(law.score(y_lim), t, inputs=x)
    torch.testing.assert_close(model(t, y_lim, inputs=x), expected, atol=1e-10, rtol=1e-10)


def test_gp_residual_score_refuses_the_std_trick_on_st_outputs_and_a_mean_the_group_moves():
    spec = GPResidualScore.examples()[0]
    st = spec.process.model_copy(update={"parametrisation": "st_preconditioned"})
    with pytest.raises(ValueError, match="std_scaling"):
        GPResidualScore(spec.model_copy(update={"process": st}))
    # rotations of the values move a constant field m != 0, so -(y - m) is not E(2)-equivariant
    kernel = {"kind": "curl_free", "dim": 2}
    egnn = {"kind": "egnn", "hidden": 8, "channels": 2, "layers": 1, "rbf": 4, "n_points": 4}
    field = {"kind": "gp_residual", "n_points": 4, "input_dim": 2, "output_dim": 2, "network": egnn}
    with pytest.raises(ValueError, match="process.mean"):
        gd.build({**field, "process": {"kind": "ou_gp", "kernel": kernel, "mean": 0.5}})
    model = gd.build({**field, "process": {"kind": "ou_gp", "kernel": kernel}})
    z = model.example_input(3, torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.4)
    errors = equivariance_errors(lambda v: model(t, v), model.group, z, output="vector")
    assert max(errors.values()) < 1e-5
    # translations and permutations move no constant field: any mean is fine, whatever the point counts
    gd.build(spec.model_copy(update={"process": spec.process.model_copy(update={"mean": 0.3})}))
    plain_net = spec.network.model_copy(update={"translation_invariant": False, "n_points": 3})
    mean = spec.process.model_copy(update={"mean": 0.3})
    shuffled = gd.build(spec.model_copy(update={"network": plain_net, "n_points": 5, "process": mean}))
    assert isinstance(shuffled.group, Permutations)
    # under st_preconditioned the residual -sigma_t L^{-1}(y - m) depends on the points' order: no group is claimed
    st_residual = gd.build(spec.model_copy(update={"process": st, "std_scaling": False}))
    assert st_residual.group is None
    x, y = _pairs(1, 4, 1, 1, dtype=torch.float64)
    order = torch.tensor([2, 0, 3, 1])
    t = torch.full((1,), 0.5, dtype=torch.float64)
    limit = st_residual.process.limit_output(y, t, inputs=x)
    assert (st_residual.process.limit_output(y[:, order], t, inputs=x[:, order]) - limit[:, order]).abs().max() > 1e-3


def test_gp_residual_score_rejects_a_mismatched_process_network_or_time_zero():
    spec = GPResidualScore.examples()[0]
    with pytest.raises(ValueError, match="ou_gp"):
        GPResidualScore(spec.model_copy(update={"process": {"kind": "vp"}}))
    with pytest.raises(ValueError, match="network"):
        GPResidualScore(spec.model_copy(update={"network": spec.network.model_copy(update={"output_dim": 2})}))
    vector_kernel = {"kind": "squared_exponential", "input_dim": 2, "output_dim": 2}
    with pytest.raises(ValueError, match="process: its kernel"):
        GPResidualScore(spec.model_copy(update={"process": {"kind": "ou_gp", "kernel": vector_kernel}}))
    model = gd.build(spec)
    x, y = _pairs(2, 4, 1, 1)
    with pytest.raises(ValueError, match="sigma_t"):
        model(torch.tensor([0.0, 0.5]), y, inputs=x)


def test_the_mlp_baseline_depends_on_the_order_of_the_points():
    torch.manual_seed(0)
    model = FunctionMLP(max_points=5, hidden=16, depth=2, n_points=4)
    z = model.example_input(2, torch.Generator().manual_seed(0))
    t = torch.full((2,), 0.5)
    errors = equivariance_errors(lambda v: model(t, v), Permutations(n=4), z)
    assert max(errors.values()) > 1e-3


@pytest.mark.parametrize("kind", ["bidim_attention", "egnn", "function_mlp", "gp_residual"])
def test_packed_graph_call_equals_keyword_call_with_a_zero_input_block(kind):
    cls = gd.registry(gd.ScoreModel)[kind]
    model = gd.build(cls.examples()[0])
    d_in, d_out = model.spec.input_dim, model.spec.output_dim
    x, y = _pairs(2, 4, d_in, d_out)
    t = torch.tensor([0.3, 0.6])
    out = model(t, torch.cat([x, y], -1))
    assert torch.equal(out[..., :d_in], torch.zeros_like(x))
    torch.testing.assert_close(out[..., d_in:], model(t, y, inputs=x), atol=1e-6, rtol=0)
    # one input set shared by the batch, as the conditional samplers pass it
    torch.testing.assert_close(
        model(t, y[:1].expand(2, 4, d_out), inputs=x[0]), model(t, y[:1].expand(2, 4, d_out), inputs=x[:1].expand(2, 4, d_in))
    )


def test_function_models_reject_mismatched_shapes_before_work():
    model = BiDimensionalAttention(hidden=8, heads=2, layers=1)
    x, y = _pairs(2, 4, 1, 1)
    with pytest.raises(ValueError, match="values"):
        model(torch.tensor(0.5), y.squeeze(-1), inputs=x)
    with pytest.raises(ValueError, match="inputs"):
        model(torch.tensor(0.5), y, inputs=x[:, :3])
    with pytest.raises(ValueError, match="graph"):
        model(torch.tensor(0.5), y)
    with pytest.raises(ValueError, match="max_points"):
        FunctionMLP(max_points=3, hidden=8, depth=1)(torch.tensor(0.5), y, inputs=x)
    with pytest.raises(ValueError, match="output_dim"):
        EGNNScore(input_dim=2, output_dim=3)
    with pytest.raises(ValueError, match="point clouds"):
        FieldGraphGroup(group={"kind": "so", "dim": 2, "action": "vector"})
