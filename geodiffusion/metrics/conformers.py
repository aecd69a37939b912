r"""Coverage and matching of conformer ensembles (COV-R/P, MAT-R/P), as in GeoDiff and ConfGF.

With :math:`S_r` the reference and :math:`S_g` the generated conformers of a molecule and :math:`D_{rg}` the
heavy-atom RMSD after the best rigid alignment over the molecule's symmetries (RDKit ``GetBestRMS``),

.. math:: \mathrm{COV\text{-}R} = \tfrac{1}{|S_r|}\big|\{r : \min_g D_{rg} \le \delta\}\big|, \qquad
          \mathrm{MAT\text{-}R} = \tfrac{1}{|S_r|}\sum_r \min_g D_{rg},

and COV-P / MAT-P the same with the roles of :math:`S_r` and :math:`S_g` exchanged (precision). The threshold
:math:`\delta` is 0.5 Å for QM9 and 1.25 Å for GEOM-Drugs; the literature generates :math:`2|S_r|` conformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "QM9_THRESHOLD",
    "DRUGS_THRESHOLD",
    "heavy_atom_rmsd_matrix",
    "kabsch_rmsd_matrix",
    "coverage_matching",
    "summarise_coverage",
    "with_conformers",
]

QM9_THRESHOLD = 0.5
DRUGS_THRESHOLD = 1.25


def _check_mol(mol: Any, name: str) -> None:
    from rdkit import Chem

    if not isinstance(mol, Chem.Mol):
        raise TypeError(f"{name}: expected an rdkit Chem.Mol, got {type(mol).__name__}")
    if mol.GetNumConformers() == 0:
        raise ValueError(f"{name}: expected a molecule with at least one conformer, got none")


def with_conformers(mol: Any, coordinates: Tensor | np.ndarray) -> Any:
    """A copy of ``mol`` whose conformers are ``coordinates [C, N, 3]`` (Å, ``mol``'s atom order)."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    xyz = coordinates.detach().cpu().double().numpy() if isinstance(coordinates, Tensor) else np.asarray(coordinates, float)
    n = mol.GetNumAtoms()
    if xyz.ndim != 3 or xyz.shape[1:] != (n, 3) or xyz.shape[0] == 0:
        raise ValueError(f"coordinates: expected shape [C >= 1, {n}, 3] for a molecule of {n} atoms, got {list(xyz.shape)}")
    if not np.isfinite(xyz).all():
        raise ValueError("coordinates: expected finite values, found NaN or inf")
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for conf_xyz in xyz:
        conf = Chem.Conformer(n)
        for i, p in enumerate(conf_xyz):
            conf.SetAtomPosition(i, Point3D(*p))
        out.AddConformer(conf, assignId=True)
    return out


def heavy_atom_rmsd_matrix(
    reference: Any, generated: Any | Tensor | np.ndarray, *, num_threads: int = 1, max_matches: int = 1_000_000
) -> Tensor:
    r""":math:`D_{rg}`, ``[R, G]`` float64: symmetry-aware best-alignment RMSD (Å) on heavy atoms.

    ``reference``: an RDKit ``Mol`` with ``R`` conformers; ``generated``: a ``Mol`` of the same atoms with ``G``
    conformers, or coordinates ``[G, N, 3]`` in ``reference``'s atom order (hydrogens included when the
    reference has them). All pairs go to one ``rdMolAlign.GetAllConformerBestRMS`` call (the atom matches are
    found once, alignments run in C++ on ``num_threads`` threads); the inputs are not modified.
    """
    from rdkit import Chem
    from rdkit.Chem import rdMolAlign

    _check_mol(reference, "reference")
    if num_threads < 1:
        raise ValueError(f"num_threads: expected a positive count, got {num_threads}")
    if not isinstance(generated, Chem.Mol):
        generated = with_conformers(reference, generated)
    _check_mol(generated, "generated")
    if generated.GetNumAtoms() != reference.GetNumAtoms() or [a.GetAtomicNum() for a in generated.GetAtoms()] != [
        a.GetAtomicNum() for a in reference.GetAtoms()
    ]:
        raise ValueError("generated: expected the same atoms, in the same order, as reference")
    both = Chem.Mol(reference)
    both.RemoveAllConformers()
    for source in (reference, generated):
        for conf in source.GetConformers():
            both.AddConformer(Chem.Conformer(conf), assignId=True)
    heavy = Chem.RemoveHs(both)
    n_ref, n = reference.GetNumConformers(), both.GetNumConformers()
    flat = np.asarray(rdMolAlign.GetAllConformerBestRMS(heavy, numThreads=num_threads, maxMatches=max_matches), dtype=np.float64)
    # RDKit's order (1,0), (2,0), (2,1), (3,0), ... is the row-major lower triangle
    full = np.zeros((n, n))
    full[np.tril_indices(n, -1)] = flat
    return torch.from_numpy(full[n_ref:, :n_ref].T.copy())


def kabsch_rmsd_matrix(reference: Tensor, generated: Tensor, *, reflections: bool = False) -> Tensor:
    r""":math:`D_{rg} = \min_{R, b} \big(\tfrac1N \sum_i |x^r_i - R x^g_i - b|^2\big)^{1/2}`, ``[R, G]``, for point
    clouds ``[R, N, 3]`` and ``[G, N, 3]`` with a fixed correspondence (Kabsch, all pairs in one batched SVD);
    ``reflections=True`` also minimises over improper :math:`R` (distances cannot tell mirror images apart)."""
    if reference.dim() != 3 or generated.dim() != 3 or reference.shape[1:] != generated.shape[1:] or reference.shape[-1] != 3:
        raise ValueError(
            f"reference, generated: expected [R, N, 3] and [G, N, 3], got {list(reference.shape)} and {list(generated.shape)}"
        )
    if not bool(torch.isfinite(reference).all() and torch.isfinite(generated).all()):
        raise ValueError("reference, generated: expected finite coordinates")
    a = reference - reference.mean(-2, keepdim=True)
    b = generated - generated.mean(-2, keepdim=True)
    h = torch.einsum("rni,gnj->rgij", a, b)
    sv = torch.linalg.svdvals(h)
    if reflections:
        trace = sv.sum(-1)
    else:
        # proper rotations only: flip the smallest singular value when det(H) < 0
        sign = torch.sign(torch.linalg.det(h))
        trace = sv[..., 0] + sv[..., 1] + torch.where(sign < 0, -sv[..., 2], sv[..., 2])
    sq = (a**2).sum((-1, -2))[:, None] + (b**2).sum((-1, -2))[None, :] - 2 * trace
    return (sq.clamp_min(0) / a.shape[1]).sqrt()


def coverage_matching(rmsd: Tensor, threshold: float = QM9_THRESHOLD) -> dict[str, Tensor]:
    r"""COV-R, MAT-R, COV-P, MAT-P of one molecule from ``rmsd [R, G]`` (:math:`D_{rg}`); coverage uses
    :math:`\min D \le \delta` (GeoDiff's convention), as a fraction in [0, 1]."""
    if not isinstance(rmsd, Tensor) or rmsd.dim() != 2 or 0 in rmsd.shape:
        raise ValueError(f"rmsd: expected a non-empty [R, G] tensor, got {getattr(rmsd, 'shape', type(rmsd).__name__)}")
    if not bool(torch.isfinite(rmsd).all()) or bool((rmsd < 0).any()):
        raise ValueError("rmsd: expected finite non-negative distances")
    if not threshold > 0:
        raise ValueError(f"threshold: expected a positive RMSD in Angstrom, got {threshold}")
    best_for_ref = rmsd.min(dim=1).values
    best_for_gen = rmsd.min(dim=0).values
    return {
        "cov_r": (best_for_ref <= threshold).to(rmsd.dtype).mean(),
        "mat_r": best_for_ref.mean(),
        "cov_p": (best_for_gen <= threshold).to(rmsd.dtype).mean(),
        "mat_p": best_for_gen.mean(),
    }


def summarise_coverage(per_molecule: Sequence[dict[str, Tensor]], prefix: str = "") -> dict[str, float]:
    """Mean and median over molecules of each of :func:`coverage_matching`'s numbers (COV in %, MAT in Å),
    the way the literature tabulates them: ``{prefix}cov_r_mean``, ``{prefix}cov_r_median``, ..."""
    if not per_molecule:
        raise ValueError("per_molecule: expected at least one molecule's metrics")
    out: dict[str, float] = {}
    for key in ("cov_r", "mat_r", "cov_p", "mat_p"):
        values = torch.stack([torch.as_tensor(m[key], dtype=torch.float64) for m in per_molecule])
        scale = 100.0 if key.startswith("cov") else 1.0
        out[f"{prefix}{key}_mean"] = float(values.mean()) * scale
        out[f"{prefix}{key}_median"] = float(values.quantile(0.5)) * scale
    return out
