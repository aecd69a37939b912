"""Concrete groups: exact image actions, defining relations, Haar sampling, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import geodiffusion as gd


def test_c4_acts_on_images_exactly_by_rot90():
    group = gd.CyclicGroup(n=4, action="image")
    x = torch.randn(3, 2, 5, 5)
    for k in range(4):
        assert torch.equal(group.act(torch.tensor(k), x), torch.rot90(x, k, dims=(-2, -1)))


def test_c2_on_images_is_the_half_turn():
    group = gd.CyclicGroup(n=2, action="image")
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(group.act(torch.tensor(1), x), torch.rot90(x, 2, dims=(-2, -1)))


def test_d4_on_images_is_rot90_after_flip_and_batched_elements_act_per_image():
    group = gd.DihedralGroup(n=4, action="image")
    x = torch.randn(8, 1, 4, 4)
    g = group.elements()  # one element per image
    out = group.act(g, x)
    for i, (k, s) in enumerate(g.tolist()):
        expected = torch.rot90(x[i].flip(-1) if s else x[i], k, dims=(-2, -1))
        assert torch.equal(out[i], expected)


def test_dihedral_relations_hold():
    group = gd.DihedralGroup(n=5)
    r = torch.tensor([1, 0])
    f = torch.tensor([0, 1])
    e = group.identity()
    r_n = e
    for _ in range(5):
        r_n = group.compose(r_n, r)
    assert torch.equal(r_n, e)
    assert torch.equal(group.compose(f, f), e)
    assert torch.equal(group.compose(group.compose(f, r), f), group.inverse(r))  # f r f = r^-1


def test_cyclic_rotation_of_the_plane():
    group = gd.CyclicGroup(n=4)
    out = group.act(torch.tensor(1), torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_image_action_rejects_non_square_images():
    with pytest.raises(ValueError, match="square"):
        gd.CyclicGroup(n=4, action="image").act(torch.tensor(1), torch.randn(1, 3, 4, 5))


@pytest.mark.parametrize("spec", [gd.SpecialOrthogonal.Spec(dim=3), gd.Orthogonal.Spec(dim=3), gd.SpecialEuclidean.Spec()])
def test_matrix_groups_reject_points_of_the_wrong_dimension(spec):
    group = gd.build(spec)
    with pytest.raises(ValueError, match="expected points of shape"):
        group.act(group.identity(), torch.randn(4, 2))


@pytest.mark.parametrize("dim", [2, 3, 4])
def test_special_orthogonal_samples_are_rotations_with_haar_moments(dim):
    g = gd.SpecialOrthogonal(dim=dim).sample(20000, torch.Generator().manual_seed(0), dtype=torch.float64)
    eye = torch.eye(dim, dtype=torch.float64)
    torch.testing.assert_close(g @ g.transpose(-1, -2), eye.expand_as(g), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(g), torch.ones(20000, dtype=torch.float64), atol=1e-12, rtol=0)
    # Haar: E[R] = 0 and E[R_ij^2] = 1/d; Monte Carlo std ~ 1/sqrt(20000 d)
    assert g.mean(0).abs().max() < 5 / math.sqrt(20000 * dim)
    torch.testing.assert_close((g**2).mean(0), torch.full((dim, dim), 1 / dim, dtype=torch.float64), atol=0.02, rtol=0)


def test_orthogonal_samples_cover_both_determinants():
    det = torch.linalg.det(gd.Orthogonal(dim=3).sample(4000, torch.Generator().manual_seed(1), dtype=torch.float64))
    torch.testing.assert_close(det.abs(), torch.ones_like(det))
    assert abs(float((det > 0).double().mean()) - 0.5) < 5 * 0.5 / math.sqrt(4000)


def test_special_euclidean_moves_point_clouds_rigidly():
    group = gd.SpecialEuclidean()
    g = group.sample(3, torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    y = group.act(g, x)
    torch.testing.assert_close(torch.cdist(y, y), torch.cdist(x, x))
    torch.testing.assert_close(y.mean(-2), group.act(g, x.mean(-2, keepdim=True)).squeeze(-2))
    torch.testing.assert_close(group.act_on_vectors(g, x), x @ g[:, :3, :3].transpose(-1, -2))


def test_translations_move_points_not_vectors():
    group = gd.Translations(dim=2, action="point_cloud")
    g = torch.tensor([1.0, -2.0])
    x = torch.randn(4, 5, 2)
    torch.testing.assert_close(group.act(g, x), x + g)
    torch.testing.assert_close(group.act_on_vectors(g, x), x)


def test_permutation_action_reorders_points():
    group = gd.Permutations(n=3)
    x = torch.tensor([[10.0], [20.0], [30.0]])
    sigma = torch.tensor([2, 0, 1])  # point i moves to slot sigma(i)
    y = group.act(sigma, x)
    assert y[2].item() == 10.0 and y[0].item() == 20.0 and y[1].item() == 30.0
    assert group.order == 6 and group.elements().shape == (6, 3)


def test_permutation_samples_are_uniform():
    g = gd.Permutations(n=3).sample(6000, torch.Generator().manual_seed(0))
    counts = torch.stack([(g == p).all(-1).sum() for p in gd.Permutations(n=3).elements()]).double()
    chi2 = float(((counts - 1000) ** 2 / 1000).sum())
    assert chi2 < 20.5  # 99.9% quantile of chi^2 with 5 degrees of freedom


def test_finite_group_sample_draws_its_elements_uniformly():
    group = gd.DihedralGroup(n=3)
    g = group.sample(6000, torch.Generator().manual_seed(3))
    counts = torch.stack([(g == e).all(-1).sum() for e in group.elements()]).double()
    assert float(((counts - 1000) ** 2 / 1000).sum()) < 20.5
