r"""Where do a conformers-qm9 run's samples miss? COV/MAT per group of test molecules, beside other sample sets.

Reads ``samples.pt`` files (a run folder's, or ``scripts/oracle_coverage.py --save``'s; chirality already
matched), scores them against the packaged test references as the experiment does, and tabulates the means per
group of molecules: by the number of reference conformers ``K`` (1 = rigid) and by heavy-atom count. With more
than one sample set, ``lost`` counts the molecules where the first set's COV-R is below the second's.

    python scripts/conformer_breakdown.py runs/conformers-qm9-RUN/samples.pt runs/oracle/hops3_tau0.pt
    python scripts/conformer_breakdown.py --rings train train_geom val test   # ring systems per packaged split
    python scripts/conformer_breakdown.py --seen-by train train_geom   # test ring systems met in training
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from geodiffusion.data.conformers import load_conformers
from geodiffusion.experiments.conformers import score_ensembles
from geodiffusion.metrics.conformers import QM9_THRESHOLD

K_BINS = ((1, 1), (2, 3), (4, 9), (10, 10**6))
HEAVY_BINS = ((1, 6), (7, 8), (9, 9))


def per_molecule(path: Path, test) -> torch.Tensor:
    """``[M, 4]``: COV-R, MAT-R, COV-P, MAT-P per test molecule (COV in %)."""
    saved = torch.load(path, weights_only=False)
    if saved["smiles"] != [e.smiles for e in test[: len(saved["smiles"])]]:
        raise ValueError(f"{path}: its molecules are not the first {len(saved['smiles'])} packaged test molecules")
    per, _, _ = score_ensembles(test[: len(saved["smiles"])], saved["model"], QM9_THRESHOLD)
    return torch.stack([torch.stack([100 * m["cov_r"], m["mat_r"], 100 * m["cov_p"], m["mat_p"]]) for m in per])


def ring_systems(split: str) -> str:
    """How many of a split's molecules have two or more rings, a bridgehead atom, a 3- or 4-membered ring."""
    from rdkit import Chem
    from rdkit.Chem import rdMolDescriptors

    mols = [Chem.MolFromSmiles(e.smiles) for e in load_conformers(split)]
    shares = {
        ">= 2 rings": sum(rdMolDescriptors.CalcNumRings(m) >= 2 for m in mols),
        "bridgehead": sum(rdMolDescriptors.CalcNumBridgeheadAtoms(m) > 0 for m in mols),
        "3/4-ring": sum(any(len(r) <= 4 for r in m.GetRingInfo().AtomRings()) for m in mols),
    }
    return f"{split:>14s} {len(mols):5d}" + "".join(f" {k} {100 * v / len(mols):3.0f}%" for k, v in shares.items())


def ring_system_keys(smiles: str) -> set[str]:
    """The molecule's ring systems (rings joined where they share an atom), each as the SMILES of its ring atoms
    and ring bonds: elements and bond orders kept, substituents and stereo dropped."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    systems: list[set[int]] = []
    for ring in mol.GetRingInfo().AtomRings():
        joined = set(ring)
        for other in [s for s in systems if s & joined]:
            systems.remove(other)
            joined |= other
        systems.append(joined)
    keys = set()
    for atoms in systems:
        bonds = [b.GetIdx() for b in mol.GetBonds() if b.IsInRing() and {b.GetBeginAtomIdx(), b.GetEndAtomIdx()} <= atoms]
        keys.add(Chem.MolFragmentToSmiles(mol, atomsToUse=sorted(atoms), bondsToUse=bonds, isomericSmiles=False))
    return keys


def seen_by(splits: list[str]) -> str:
    """How many ring-bearing test molecules have every ring system in some molecule of ``splits``."""
    seen = set().union(*(ring_system_keys(e.smiles) for split in splits for e in load_conformers(split)))
    ringed = [keys for keys in (ring_system_keys(e.smiles) for e in load_conformers("test")) if keys]
    met = sum(keys <= seen for keys in ringed)
    return f"{' + '.join(splits)}: {met} of the {len(ringed)} test molecules with rings have every ring system in training"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samples", type=Path, nargs="*", help="samples.pt files")
    parser.add_argument("--rings", nargs="+", default=None, help="packaged splits: print their ring systems instead")
    parser.add_argument("--seen-by", nargs="+", default=None, help="training splits: count test ring systems they hold")
    args = parser.parse_args(argv)
    if args.rings or args.seen_by:
        for split in args.rings or []:
            print(ring_systems(split))
        if args.seen_by:
            print(seen_by(args.seen_by))
        return
    if not args.samples:
        parser.error("give samples.pt files, --rings SPLIT ... or --seen-by SPLIT ...")
    test = load_conformers("test")
    tables = [per_molecule(p, test) for p in args.samples]
    m = min(t.shape[0] for t in tables)
    tables = [t[:m] for t in tables]
    k = torch.tensor([e.n_conformers for e in test[:m]])
    heavy = torch.tensor([e.mol.GetNumHeavyAtoms() for e in test[:m]])
    for i, p in enumerate(args.samples):
        print(f"[{i}] {p}")
    groups = [(f"K {lo}-{hi}" if hi < 10**6 else f"K >= {lo}", (k >= lo) & (k <= hi)) for lo, hi in K_BINS]
    groups += [(f"heavy {lo}-{hi}", (heavy >= lo) & (heavy <= hi)) for lo, hi in HEAVY_BINS]
    groups.append(("all", torch.ones(m, dtype=torch.bool)))
    head = f"{'group':>12s} {'mols':>5s}" + "".join(f" {f'COV-R[{i}]':>9s} {f'MAT-R[{i}]':>9s}" for i in range(len(tables)))
    print(head + (f" {'lost':>5s}" if len(tables) > 1 else ""))
    for name, mask in groups:
        if not bool(mask.any()):
            continue
        row = f"{name:>12s} {int(mask.sum()):5d}"
        row += "".join(f" {float(t[mask, 0].mean()):9.1f} {float(t[mask, 1].mean()):9.3f}" for t in tables)
        if len(tables) > 1:
            row += f" {int((tables[0][mask, 0] < tables[1][mask, 0]).sum()):5d}"
        print(row)


if __name__ == "__main__":
    main()
