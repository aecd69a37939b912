"""Lattice gauge symmetry: Wilson loops against a path-walking reference, the gauge group's action against the grid
construction, and the gauge-equivariant potential score (a Riemannian gradient, by finite differences)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.data import lattice
from geodiffusion.experiments import SU3LatticeExperiment
from geodiffusion.samplers.riemannian import riemannian_divergence
from geodiffusion.training.riemannian import riemannian_dsm_loss


def _links(size: int, batch: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    k = lattice.n_links(size)
    points = gd.SU(n=n).random_point(batch * k, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return points.reshape(batch, k, n, n)


def _walked_loop_traces(links: torch.Tensor, size: int) -> torch.Tensor:
    """tr W / n of every rectangle by walking its boundary link by link (batch of one), in wilson_loops' order."""
    half = size * (size - 1)

    def link(x: int, y: int, mu: int) -> torch.Tensor:  # from (x, y) one step along mu
        return links[x * size + y] if mu == 0 else links[half + x * (size - 1) + y]

    out = []
    for w in range(1, size):
        for h in range(1, size):
            for x in range(size - w):
                for y in range(size - h):
                    u = torch.eye(links.shape[-1], dtype=links.dtype)
                    for i in range(w):
                        u = u @ link(x + i, y, 0)
                    for j in range(h):
                        u = u @ link(x + w, y + j, 1)
                    for i in reversed(range(w)):
                        u = u @ link(x + i, y + h, 0).mH
                    for j in reversed(range(h)):
                        u = u @ link(x, y + j, 1).mH
                    out.append(torch.trace(u) / links.shape[-1])
    return torch.stack(out)


@pytest.mark.parametrize("size, n", [(2, 2), (3, 3), (4, 3)])
def test_wilson_loops_match_walking_each_rectangle(size, n):
    links = _links(size, 2, n)
    loops = lattice.wilson_loops(links, size)
    assert loops.shape == (2, (size * (size - 1) // 2) ** 2) and loops.shape[-1] == lattice.n_wilson_loops(size)
    assert lattice.n_wilson_loops(size, max_extent=1) == (size - 1) ** 2
    for b in range(2):
        torch.testing.assert_close(loops[b], _walked_loop_traces(links[b], size), rtol=0, atol=1e-12)
    # 1 x 1 loops are the plaquettes; max_extent keeps the w, h <= max_extent block
    torch.testing.assert_close(loops[:, : (size - 1) ** 2].real, lattice.plaquettes(links, size), rtol=0, atol=1e-12)
    if size > 2:  # max_extent = 1 keeps exactly the plaquettes
        torch.testing.assert_close(lattice.wilson_loops(links, size, max_extent=1), loops[:, : (size - 1) ** 2])
    with pytest.raises(ValueError, match="max_extent"):
        lattice.wilson_loops(links, size, max_extent=size)
    with pytest.raises(ValueError, match="links: expected shape"):
        lattice.wilson_loops(links[:, 1:], size)
    with pytest.raises(ValueError, match="lattice side"):
        lattice.wilson_loops(links, 1)
    if n != 3:
        with pytest.raises(ValueError, match="SU\\(3\\)'s"):
            lattice.wilson_log_density(links, size, 1.0, 0.0)


def test_gauge_action_matches_the_grid_construction_and_fixes_every_loop():
    size = 3
    group = gd.LatticeGauge(size=size, n=3)
    links = _links(size, 1)[0]
    g = group.sample(1, torch.Generator().manual_seed(1), dtype=torch.float64)[0]
    grid = g.reshape(size, size, 3, 3)  # site x L + y
    half = size * (size - 1)
    h = links[:half].reshape(size - 1, size, 3, 3)
    v = links[half:].reshape(size, size - 1, 3, 3)
    expected = torch.cat(
        [(grid[:-1, :] @ h @ grid[1:, :].mH).reshape(-1, 3, 3), (grid[:, :-1] @ v @ grid[:, 1:].mH).reshape(-1, 3, 3)]
    )
    moved = group.act(g, links)
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(lattice.wilson_loops(moved, size), lattice.wilson_loops(links, size), rtol=0, atol=1e-12)
    assert group.sample(2).dtype == torch.complex64 and group.identity((2,), dtype=torch.float64).dtype == torch.complex128
    with pytest.raises(ValueError, match="LatticeGauge: expected links"):
        group.act(g, links[1:])
    with pytest.raises(ValueError, match="LatticeGauge: expected elements"):
        group.act(gd.LatticeGauge(size=2, n=3).sample(1)[0], links)


def test_gauge_potential_score_is_the_riemannian_gradient_of_its_potential():
    torch.manual_seed(0)
    model = gd.GaugePotential(size=3, n=3, hidden=32, depth=2).double()
    x = _links(3, 6, seed=2)
    t = torch.linspace(0.05, 0.9, 6, dtype=torch.float64)
    with torch.no_grad():
        score = model(t, x)
    assert not score.requires_grad  # sampling keeps no graph
    manifold = model.manifold
    torch.testing.assert_close(manifold.proj(x, score), score, rtol=0, atol=1e-13)
    v = manifold.random_tangent(x, torch.Generator().manual_seed(3))
    h = 1e-5
    with torch.no_grad():
        forward, backward = (model.potential(t, manifold.exp(x, s * h * v)) for s in (1.0, -1.0))
    torch.testing.assert_close(manifold.inner(x, score, v), (forward - backward) / (2 * h), rtol=1e-7, atol=1e-9)


def test_gauge_potential_divergence_is_the_laplacian_of_its_potential():
    # the NLL integrates div s_theta; for s = grad f it is the Laplace-Beltrami operator of f, here computed
    # independently in exponential coordinates (a graph cut between x and the score would change it)
    torch.manual_seed(0)
    model = gd.GaugePotential(size=2, n=3, hidden=16, depth=2).double()
    x = _links(2, 3, seed=6)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    y = x.clone().requires_grad_()
    divergence = riemannian_divergence(model.manifold, model(t, y), y)
    laplacian = model.manifold.laplace_beltrami(lambda z: model.potential(t, z), x)
    torch.testing.assert_close(divergence, laplacian, rtol=1e-9, atol=1e-10)


def test_gauge_potential_trains_and_its_divergence_is_defined():
    torch.manual_seed(0)
    model = gd.GaugePotential(size=2, n=3, hidden=16, depth=2).double()
    process = gd.BrownianProcess(manifold={"kind": "product", "factor": {"kind": "su", "n": 3}, "power": 4})
    x0 = _links(2, 8, seed=4)
    loss = riemannian_dsm_loss(model, process, x0, generator=torch.Generator().manual_seed(5))
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    assert float(sum(p.grad.abs().sum() for p in model.parameters())) > 0
    # the NLL's divergence differentiates the score w.r.t. x: the graph must be kept
    x = x0.clone().requires_grad_()
    score = model(torch.full((8,), 0.3, dtype=torch.float64), x)
    (second,) = torch.autograd.grad(score.real.sum(), x)
    assert bool(torch.isfinite(second).all()) and float(second.abs().sum()) > 0


def test_gauge_potential_rejects_bad_input():
    with pytest.raises(ValidationError, match="max_extent"):
        gd.GaugePotential(size=3, max_extent=3)
    model = gd.GaugePotential(size=2, n=3, hidden=8, depth=1)
    with pytest.raises(ValueError, match="complex links of shape"):
        model(torch.tensor(0.5), _links(2, 2).real.float())
    with pytest.raises(ValueError, match="complex links of shape"):
        model(torch.tensor(0.5), _links(3, 2).to(torch.complex64))
    with pytest.raises(RuntimeError, match="inference_mode"), torch.inference_mode():
        model(torch.tensor(0.5), _links(2, 2).to(torch.complex64))
    with pytest.raises(ValidationError, match="n"):
        gd.LatticeGauge(size=2, n=17)
    with pytest.raises(ValidationError, match="gauge potential on the L = 3 lattice"):
        SU3LatticeExperiment.resolve_spec({"model": {"kind": "gauge_potential", "size": 2}})


def test_the_gauge_equivariance_check_catches_a_network_that_ignores_the_gauge():
    # the registry-wide contract passes GaugePotential through check_equivariant under LatticeGauge; the same check
    # must fail an ambient tangent network on the same links, which has no reason to be gauge-equivariant
    from geodiffusion.testing import CheckError, check_equivariant

    torch.manual_seed(0)
    manifold = {"kind": "product", "factor": {"kind": "su", "n": 3}, "power": lattice.n_links(2)}
    model = gd.TangentMLP(manifold=manifold, hidden=16, depth=1).double()
    x = _links(2, 3, seed=7)
    t = torch.full((3,), 0.3, dtype=torch.float64)
    with pytest.raises(CheckError, match="equivariance"):
        check_equivariant(lambda z: model(t, z), gd.LatticeGauge(size=2, n=3), x)
