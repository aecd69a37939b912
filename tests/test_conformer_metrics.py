"""Coverage/matching of conformer ensembles: RDKit best-alignment RMSD on heavy atoms, COV/MAT identities."""

from __future__ import annotations

import math

import pytest
import torch

from geodiffusion.metrics.conformers import coverage_matching, heavy_atom_rmsd_matrix, summarise_coverage, with_conformers

Chem = pytest.importorskip("rdkit.Chem")
AllChem = pytest.importorskip("rdkit.Chem.AllChem")
rd_mol_align = pytest.importorskip("rdkit.Chem.rdMolAlign")


@pytest.fixture(scope="module")
def ensemble():
    mol = Chem.AddHs(Chem.MolFromSmiles("CCOC(=O)CCO"))
    AllChem.EmbedMultipleConfs(mol, 4, randomSeed=7)
    return mol


def coords(mol) -> torch.Tensor:
    return torch.stack([torch.from_numpy(c.GetPositions()) for c in mol.GetConformers()])


def heavy_gyration_radius(x: torch.Tensor, heavy: torch.Tensor) -> torch.Tensor:
    h = x[..., heavy, :]
    return ((h - h.mean(-2, keepdim=True)) ** 2).sum(-1).mean(-1).sqrt()


def scaled(x: torch.Tensor, heavy: torch.Tensor, factor: float) -> torch.Tensor:
    """Dilation about the heavy-atom centroid: its best-aligned RMSD to x is |factor - 1| * R_g (no rotation helps)."""
    centre = x[..., heavy, :].mean(-2, keepdim=True)
    return centre + factor * (x - centre)


def test_identical_sets_are_fully_covered_with_zero_matching(ensemble):
    rmsd = heavy_atom_rmsd_matrix(ensemble, ensemble)
    assert rmsd.shape == (4, 4) and rmsd.dtype == torch.float64
    assert torch.allclose(rmsd.diagonal(), torch.zeros(4, dtype=torch.float64), atol=1e-6)
    m = coverage_matching(rmsd)
    assert float(m["cov_r"]) == 1.0 and float(m["cov_p"]) == 1.0
    assert float(m["mat_r"]) < 1e-6 and float(m["mat_p"]) < 1e-6


def test_rmsd_matrix_matches_pairwise_get_best_rms_and_ignores_rigid_motions(ensemble):
    x = coords(ensemble)
    rot = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    rot = rot * torch.linalg.det(rot)  # a proper rotation
    moved = x @ rot.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    rmsd = heavy_atom_rmsd_matrix(ensemble, moved)
    heavy = Chem.RemoveHs(ensemble)
    for r, g in [(0, 1), (2, 3), (3, 0)]:
        expected = rd_mol_align.GetBestRMS(Chem.Mol(heavy), heavy, prbId=g, refId=r)
        assert math.isclose(float(rmsd[r, g]), expected, abs_tol=1e-6)
    assert torch.allclose(rmsd.diagonal(), torch.zeros(4, dtype=torch.float64), atol=1e-6)


def test_perturbed_set_gives_hand_computed_coverage_and_matching(ensemble):
    x = coords(ensemble)[:2]
    heavy = torch.tensor([a.GetAtomicNum() > 1 for a in ensemble.GetAtoms()])
    reference = with_conformers(ensemble, x)
    rg = heavy_gyration_radius(x, heavy)
    # generated: conformer 0 dilated by 5 % and 20 %; conformer 1 not generated at all
    gen = torch.stack([scaled(x[0], heavy, 1.05), scaled(x[0], heavy, 1.20)])
    rmsd = heavy_atom_rmsd_matrix(reference, gen)
    assert torch.allclose(rmsd[0], torch.stack([0.05 * rg[0], 0.20 * rg[0]]), atol=1e-6)
    threshold = float(0.5 * (0.05 + 0.20) * rg[0])  # between the two dilations
    m = coverage_matching(rmsd, threshold)
    d01 = rmsd[1].min()
    cov_r = (1 + float(d01 <= threshold)) / 2
    assert math.isclose(float(m["cov_r"]), cov_r)
    assert math.isclose(float(m["mat_r"]), float(0.05 * rg[0] + d01) / 2, rel_tol=1e-9)
    assert math.isclose(float(m["cov_p"]), 0.5)  # only the 5 % dilation is within the threshold of a reference
    assert math.isclose(float(m["mat_p"]), float(rmsd.min(0).values.mean()), rel_tol=1e-12)
    assert math.isclose(float(m["mat_p"]), float(0.05 * rg[0] + torch.minimum(0.20 * rg[0], rmsd[1, 1])) / 2, rel_tol=1e-6)


def test_threshold_is_inclusive_and_monotone():
    rmsd = torch.tensor([[0.3, 0.9], [0.5, 0.7], [1.2, 0.6]], dtype=torch.float64)
    at = coverage_matching(rmsd, 0.5)
    assert float(at["cov_r"]) == pytest.approx(2 / 3)  # 0.3 and 0.5 (inclusive) covered, min 0.6 is not
    assert float(at["cov_p"]) == pytest.approx(1 / 2)  # column mins 0.3, 0.6
    assert float(at["mat_r"]) == pytest.approx((0.3 + 0.5 + 0.6) / 3)
    assert float(at["mat_p"]) == pytest.approx((0.3 + 0.6) / 2)
    below = coverage_matching(rmsd, 0.5 - 1e-9)
    assert float(below["cov_r"]) == pytest.approx(1 / 3)
    covs = [float(coverage_matching(rmsd, d)["cov_r"]) for d in (0.1, 0.4, 0.55, 0.65, 2.0)]
    assert covs == sorted(covs) and covs[0] == 0.0 and covs[-1] == 1.0
    summary = summarise_coverage([at, below], prefix="x_")
    assert summary["x_cov_r_mean"] == pytest.approx(50.0) and summary["x_mat_r_median"] == pytest.approx(1.4 / 3)


def test_bad_inputs_are_rejected(ensemble):
    with pytest.raises(ValueError, match="threshold"):
        coverage_matching(torch.ones(2, 2), 0.0)
    with pytest.raises(ValueError, match="rmsd"):
        coverage_matching(torch.ones(0, 2))
    with pytest.raises(ValueError, match="finite"):
        coverage_matching(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="coordinates"):
        heavy_atom_rmsd_matrix(ensemble, torch.zeros(2, 3, 3))
    bad = coords(ensemble)[:1].clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        heavy_atom_rmsd_matrix(ensemble, bad)
    with pytest.raises(ValueError, match="conformer"):
        heavy_atom_rmsd_matrix(Chem.AddHs(Chem.MolFromSmiles("CCO")), coords(ensemble)[:1])
