#!/usr/bin/env python
r"""Build the packaged GEOM-like conformer ensembles (``geodiffusion/data/files/conformers/``) offline.

Recipe per molecule (as close to GEOM's CREST ensembles as offline tools allow, see PROVENANCE.md there):

1. ``n_seeds = clip(2K, seeds_min, seeds_max)`` ETKDGv3 embeddings, one RDKit ``EmbedMolecule`` call per
   conformer with the explicit seed ``REF_SEED_BASE + 1000 * mol_index + j`` (so every test reference seed is
   < 10^6, test indices being < ``TEST_POOL``, and the ETKDG baseline's seeds, >= 10^7, are provably disjoint
   from them; training splits past index 999 go beyond 10^6, which the baseline never embeds);
2. MMFF94 pre-optimisation, heavy-atom RMSD de-duplication (``dedupe_rmsd``) to skip redundant xTB work;
3. GFN2-xTB geometry optimisation (``tblite``, scipy L-BFGS-B on :math:`E(x)` and :math:`\nabla E`, max
   gradient component < ``gtol`` Eh/bohr, SCF restarted from the previous step) -- or MMFF only with
   ``--method mmff`` (a clearly labelled fallback);
4. conformers whose bonds stretched > 25 % or whose 3-D stereo changed are dropped; energy window
   ``window_kcal`` above the lowest; energy-sorted greedy de-duplication at ``dedupe_rmsd`` heavy-atom
   ``GetBestRMS`` (symmetry-aware); at most ``K`` conformers kept (``K`` = GEOM's CREST count for test
   molecules, ``cap_train`` for training molecules).

Splits are by molecule: ``test`` = the first ``VAL_GEOM_START`` molecules of the GEOM-QM9 test list of GeoMol
(``n_conformers`` = GEOM count), shuffled with seed 0; ``val_geom`` = positions ``VAL_GEOM_START`` to ``TEST_POOL``
of that list, held out like the test molecules (GEOM count); ``train_geom`` = the rest of the shuffled list, more
training molecules drawn like the test ones (``cap_train`` conformers each); ``train``/``val`` = QM9-like NCI
molecules from the rdkit wheel (C, N, O, F, neutral, <= 9 heavy atoms, one fragment) not in the test list, shuffled
with seed 0, every 10th to ``val``; ``train_pubchem`` = the QM9-like molecules of the PubChem identifier table in the
``chemicals`` wheel (``pip install chemicals``) that are in no other split's candidate list, shuffled with seed 0;
``train_rings`` = one-edit neighbours of the ``train_geom`` candidates with a 3- or 4-membered ring
(:func:`ring_neighbours`), in no other split's candidate list.

The run is resumable: finished molecules are cached one file per molecule under ``--work`` and the packed
``conformers_<split>.sdf.gz`` already in ``--out`` is read back, so a later run with a larger ``--n`` extends it.
Then ``--pack`` rewrites the SDF and ``manifest.json`` (counts, SHA-256 of the uncompressed SDF, timings).

    python scripts/make_conformer_dataset.py --split test --n 250 --workers 2 --method xtb
    python scripts/make_conformer_dataset.py --split train --n 400 --workers 2 --method xtb
    python scripts/make_conformer_dataset.py --split train_geom --n 500 --workers 2 --method xtb
    python scripts/make_conformer_dataset.py --split train_pubchem --n 1000 --workers 2 --method xtb
    python scripts/make_conformer_dataset.py --split train_rings --n 1000 --workers 2 --method xtb
    python scripts/make_conformer_dataset.py --split val_geom --n 100 --workers 2 --method xtb
    python scripts/make_conformer_dataset.py --pack
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker; tblite is OpenMP-parallel otherwise

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "geodiffusion" / "data" / "files" / "conformers"
SHARED = ROOT.parent / "shared" / "data" / "molecules" / "geomol_splits" / "qm9_test_smiles_corrected.csv"
BOHR_PER_ANGSTROM = 1.8897261254578281
HARTREE_KCAL = 627.509474
REF_SEED_BASE = 1
SPLITS = ("train", "train_geom", "train_pubchem", "train_rings", "val", "val_geom", "test")
# the held-out pool: this many first positions of the shuffled GEOM-QM9 list; train_geom takes the rest, so no
# training molecule is ever a held-out one however far either side is extended
TEST_POOL = 500
# the test split may grow up to this position; val_geom takes the rest of the pool, drawn like the test molecules
VAL_GEOM_START = 400
HELD_OUT_GEOM = ("test", "val_geom")  # the two splits of the pool


def _rdkit():
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem, rdMolAlign

    RDLogger.DisableLog("rdApp.*")
    return Chem, AllChem, rdMolAlign


def canonical(smiles: str) -> str | None:
    Chem, _, _ = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def test_molecules(path: Path = SHARED) -> list[tuple[str, int]]:
    """(corrected SMILES, GEOM count) of the GEOM-QM9 test list, in the seeded order of the dataset."""
    with open(path) as fh:
        rows = [(r["corrected_smiles"], int(r["n_conformers"])) for r in csv.DictReader(fh)]
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i] for i in order]


def qm9_like(smiles_list, exclude: set[str]) -> list[str]:
    """Canonical SMILES of the QM9-like molecules (C, N, O, F, neutral, 2-9 heavy atoms, one fragment) among
    ``smiles_list``, minus ``exclude``, without repeats, shuffled with numpy seed 0 after sorting."""
    Chem, _, _ = _rdkit()
    pool: set[str] = set()
    for smiles in smiles_list:
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        if mol is None or len(Chem.GetMolFrags(mol)) != 1 or mol.GetNumAtoms() > 9 or mol.GetNumAtoms() < 2:
            continue
        if any(
            a.GetSymbol() not in "CNOF" or a.GetFormalCharge() or a.GetNumRadicalElectrons() or a.GetIsotope()
            for a in mol.GetAtoms()
        ):
            continue
        pool.add(Chem.MolToSmiles(mol))
    ordered = sorted(pool - exclude)
    return [ordered[i] for i in np.random.default_rng(0).permutation(len(ordered))]


def nci_molecules(exclude: set[str]) -> tuple[list[str], list[str]]:
    """QM9-like NCI SMILES from the rdkit wheel, minus ``exclude``; (train, val) by molecule."""
    from rdkit import RDConfig

    with open(os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi")) as fh:
        pool = qm9_like([line.split()[0] for line in fh if line.split()], exclude)
    return [s for i, s in enumerate(pool) if i % 10 != 9], [s for i, s in enumerate(pool) if i % 10 == 9]


def pubchem_molecules(exclude: set[str]) -> list[str]:
    """QM9-like molecules of the PubChem identifier table that the ``chemicals`` wheel ships (MIT; the
    identifiers are PubChem's, public domain), minus ``exclude`` compared without stereo (the table often
    leaves stereo out where the GEOM list gives it)."""
    import chemicals

    table = Path(chemicals.__file__).parent / "Identifiers" / "chemical identifiers pubchem large.tsv"
    with open(table, encoding="utf-8") as fh:
        pool = qm9_like([row.split("\t")[4] for row in fh if row.count("\t") >= 4], set())
    taken = {flat_smiles(s) for s in exclude}
    return [s for s in pool if flat_smiles(s) not in taken]


def ring_neighbours(seeds: list[str], exclude: set[str]) -> list[str]:
    """QM9-like molecules one edit away from ``seeds`` that keep a 3- or 4-membered ring, minus ``exclude`` (compared
    by constitution): the small-ring chemistry that GEOM-QM9 is rich in and the NCI and PubChem pools lack.

    An edit changes one heavy atom's element (C, N, O, F), adds one heavy atom by a single or double bond, removes
    a terminal heavy atom, or raises or lowers one bond order; RDKit's sanitisation rejects the invalid valences.
    Each constitution appears once, as the first of its stereoisomers that RDKit enumerates where stereo is left
    open, so every ETKDG seed embeds the same molecule. Sorted, then shuffled with numpy seed 0."""
    Chem, _, _ = _rdkit()
    from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions

    single, double = Chem.BondType.SINGLE, Chem.BondType.DOUBLE
    raise_order = {single: double, double: Chem.BondType.TRIPLE}
    lower_order = {double: single, Chem.BondType.TRIPLE: double}

    def edits(mol) -> list:
        out = []
        for atom in mol.GetAtoms():
            i = atom.GetIdx()
            for z in (6, 7, 8, 9):
                if z != atom.GetAtomicNum():
                    m = Chem.RWMol(mol)
                    m.GetAtomWithIdx(i).SetAtomicNum(z)
                    out.append(m)
            for z in (6, 7, 8, 9):
                for order in (single, double):
                    m = Chem.RWMol(mol)
                    m.AddBond(i, m.AddAtom(Chem.Atom(z)), order)
                    out.append(m)
            if atom.GetDegree() == 1:
                m = Chem.RWMol(mol)
                m.RemoveAtom(i)
                out.append(m)
        for bond in mol.GetBonds():
            for table in (raise_order, lower_order):
                if bond.GetBondType() in table:
                    m = Chem.RWMol(mol)
                    m.GetBondWithIdx(bond.GetIdx()).SetBondType(table[bond.GetBondType()])
                    out.append(m)
        return out

    taken = {flat_smiles(s) for s in exclude}
    found: dict[str, str] = {}  # constitution -> SMILES with stereo
    options = StereoEnumerationOptions(onlyUnassigned=True, unique=True)
    for smiles in seeds:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            continue
        Chem.Kekulize(mol, clearAromaticFlags=True)
        for edit in edits(mol):
            for atom in edit.GetAtoms():  # hydrogens follow the new valences
                atom.SetNoImplicit(False)
                atom.SetNumExplicitHs(0)
            new = edit.GetMol()
            if Chem.SanitizeMol(new, catchErrors=True) != Chem.SanitizeFlags.SANITIZE_NONE:
                continue
            if not any(len(ring) in (3, 4) for ring in new.GetRingInfo().AtomRings()):
                continue
            flat = Chem.MolToSmiles(new, isomericSmiles=False)
            if flat in taken or flat in found:
                continue
            # a SMILES round trip re-perceives stereo: an edit can leave a stale tag on a changed centre
            new = Chem.MolFromSmiles(Chem.MolToSmiles(new))
            if new is not None:
                found[flat] = Chem.MolToSmiles(next(iter(EnumerateStereoisomers(new, options=options))))
    return qm9_like(found.values(), set())


def flat_smiles(smiles: str) -> str | None:
    """Canonical SMILES without stereo: the constitution, which no two splits may share (None: unparsable)."""
    Chem, _, _ = _rdkit()
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


def test_constitutions() -> set[str]:
    """Constitutions of every molecule of the held-out pool (test and val_geom, however far they grow)."""
    return {flat_smiles(s) for s, _ in test_molecules()[:TEST_POOL]} - {None}


def jobs(split: str) -> list[tuple[str, int]]:
    """The ordered molecule list of ``split``: (SMILES, cap on the number of conformers)."""
    tests = test_molecules()
    if split == "test":
        return tests[:VAL_GEOM_START]
    if split == "val_geom":
        return tests[VAL_GEOM_START:TEST_POOL]
    if split == "train_geom":
        return [(s, -1) for s, _ in tests[TEST_POOL:]]
    exclude = {c for c in (canonical(s) for s, _ in tests) if c}
    train, val = nci_molecules(exclude)
    listed = exclude | set(train) | set(val)  # the GEOM-QM9 list and the NCI candidates
    if split == "train_pubchem":  # disjoint from every other split's candidates, whichever were built
        return [(s, -1) for s in pubchem_molecules(listed)]
    if split == "train_rings":  # neighbours of train_geom's molecules, disjoint from every other split's candidates
        others = listed | set(pubchem_molecules(listed))
        return [(s, -1) for s in ring_neighbours([s for s, _ in tests[TEST_POOL:]], others)]
    return [(s, -1) for s in (train if split == "train" else val)]


# ---------------------------------------------------------------------------------------------- one molecule
def _xtb_optimise(z: np.ndarray, pos: np.ndarray, gtol: float, maxiter: int) -> tuple[np.ndarray, float]:
    """GFN2-xTB local minimum from ``pos`` (Angstrom) by L-BFGS-B; returns (Angstrom positions, Hartree)."""
    from scipy.optimize import minimize
    from tblite.interface import Calculator

    x0 = pos * BOHR_PER_ANGSTROM
    calc = Calculator("GFN2-xTB", z, x0)
    calc.set("verbosity", 0)
    state: dict = {"res": None}

    def energy_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
        calc.update(x.reshape(-1, 3))
        # restarting the SCF from the last wavefunction halves its iterations
        state["res"] = calc.singlepoint(state["res"]) if state["res"] is not None else calc.singlepoint()
        return float(state["res"].get("energy")), np.asarray(state["res"].get("gradient")).ravel()

    res = minimize(energy_and_grad, x0.ravel(), jac=True, method="L-BFGS-B", options={"gtol": gtol, "maxiter": maxiter})
    if not np.all(np.isfinite(res.x)) or np.abs(res.jac).max() > 10 * gtol:
        raise RuntimeError(f"xTB optimisation did not converge: {res.message}")
    return res.x.reshape(-1, 3) / BOHR_PER_ANGSTROM, float(res.fun)


def build_molecule(args: tuple[int, str, int, dict]) -> dict:
    """Reference ensemble of one molecule: a JSON-able dict with the SD block of every kept conformer."""
    index, smiles, cap, cfg = args
    Chem, AllChem, rdMolAlign = _rdkit()
    from rdkit.Chem import rdDistGeom

    t0 = time.perf_counter()
    out = {"index": index, "smiles": smiles, "cap": cap, "ok": False}
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or len(Chem.GetMolFrags(mol)) != 1:
        return {**out, "reason": "unparsable or fragmented"}
    mol = Chem.AddHs(mol)
    if mol.GetNumAtoms() < 3:
        return {**out, "reason": "fewer than 3 atoms"}
    k = cap if cap > 0 else cfg["cap_train"]
    n_seeds = int(np.clip(2 * k, cfg["seeds_min"], cfg["seeds_max"]))
    params = rdDistGeom.ETKDGv3()
    cids = []
    for j in range(n_seeds):
        params.randomSeed = REF_SEED_BASE + 1000 * index + j
        # EmbedMolecule replaces conformers, so embed into a scratch copy and move the coordinates over
        scratch = Chem.Mol(mol, confId=-1)
        scratch.RemoveAllConformers()
        if AllChem.EmbedMolecule(scratch, params) == 0:
            conf = Chem.Conformer(scratch.GetConformer())
            cid = mol.AddConformer(conf, assignId=True)
            cids.append((cid, params.randomSeed))
    if not cids:
        return {**out, "reason": "ETKDG embedding failed"}
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        return {**out, "reason": "no MMFF parameters"}
    mmff = AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
    heavy_idx = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    heavy = Chem.RemoveHs(mol)
    ref_stereo = _stereo(mol, cids[0][0])

    def dedupe(order: list[int], coords: dict[int, np.ndarray]) -> list[int]:
        kept: list[int] = []
        for i in order:
            _set(heavy, i, coords[i][heavy_idx])
            if all(rdMolAlign.GetBestRMS(heavy, heavy, prbId=i, refId=j) > cfg["dedupe_rmsd"] for j in kept):
                kept.append(i)
        return kept

    coords = {cid: mol.GetConformer(cid).GetPositions() for cid, _ in cids}
    order = sorted((cid for cid, _ in cids), key=lambda c: mmff[[x for x, _ in cids].index(c)][1])
    unique = dedupe(order, coords)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()])
    energy: dict[int, float] = {}
    n_opt = 0
    t_opt = time.perf_counter()
    for cid in unique:
        start = coords[cid]
        if cfg["method"] == "xtb":
            try:
                new, e = _xtb_optimise(z, start, cfg["gtol"], cfg["maxiter"])
            except Exception:  # noqa: BLE001 - an SCF failure drops that conformer only
                continue
            e_kcal = e * HARTREE_KCAL
        else:
            new, e_kcal = start, mmff[[x for x, _ in cids].index(cid)][1]
        n_opt += 1
        ratio = np.linalg.norm(new[bonds[:, 0]] - new[bonds[:, 1]], axis=1) / np.linalg.norm(
            start[bonds[:, 0]] - start[bonds[:, 1]], axis=1
        )
        _set(mol, cid, new)
        if np.abs(ratio - 1).max() > 0.25 or _stereo(mol, cid) != ref_stereo:
            continue  # a bond broke or stereo flipped: a different molecule
        coords[cid] = new
        energy[cid] = e_kcal
    t_opt = time.perf_counter() - t_opt
    if not energy:
        return {**out, "reason": "no conformer survived optimisation"}
    e_min = min(energy.values())
    window = sorted((c for c, e in energy.items() if e - e_min <= cfg["window_kcal"]), key=energy.get)
    kept = dedupe(window, coords)[:k]
    seed_of = dict(cids)
    blocks = []
    for rank, cid in enumerate(kept):
        _set(mol, cid, coords[cid])
        mol.SetProp("_Name", f"{cfg['split']}_{index}_{rank}")
        mol.SetProp("smiles", smiles)
        mol.SetIntProp("mol_index", index)
        mol.SetIntProp("conf_rank", rank)
        mol.SetIntProp("ref_cap", k)
        mol.SetIntProp("etkdg_seed", seed_of[cid])
        mol.SetProp("method", "GFN2-xTB" if cfg["method"] == "xtb" else "MMFF94")
        mol.SetDoubleProp("rel_energy_kcal", float(energy[cid] - e_min))
        blocks.append(Chem.MolToMolBlock(mol, confId=cid) + _props(mol) + "$$$$\n")
    return {
        **out,
        "ok": True,
        "n_seeds": len(cids),
        "n_optimised": n_opt,
        "n_kept": len(kept),
        "seconds": time.perf_counter() - t0,
        "seconds_opt": t_opt,
        "sdf": "".join(blocks),
    }


def _set(mol, cid: int, xyz: np.ndarray) -> None:
    from rdkit.Geometry import Point3D

    conf = mol.GetConformer(cid)
    for i, p in enumerate(xyz):
        conf.SetAtomPosition(i, Point3D(*map(float, p)))


def _stereo(mol, cid: int) -> str:
    Chem, _, _ = _rdkit()
    m = Chem.Mol(mol, confId=cid)
    Chem.AssignStereochemistryFrom3D(m, confId=cid)
    return Chem.MolToSmiles(Chem.RemoveHs(m))


def _props(mol) -> str:
    return "".join(f">  <{k}>\n{mol.GetProp(k)}\n\n" for k in mol.GetPropNames())


# ---------------------------------------------------------------------------------------------- driver
def _packed(split: str, out: Path) -> dict[int, str]:
    """mol_index -> SD text of the molecules already in the packed file (the resume point)."""
    path = out / f"conformers_{split}.sdf.gz"
    if not path.exists():
        return {}
    done: dict[int, list[str]] = {}
    for block in gzip.decompress(path.read_bytes()).decode().split("$$$$\n"):
        if block.strip():
            idx = int(block.split(">  <mol_index>\n")[1].split("\n")[0])
            done.setdefault(idx, []).append(block + "$$$$\n")
    return {k: "".join(v) for k, v in done.items()}


def generate(split: str, n: int, workers: int, cfg: dict, work: Path, out: Path, budget_s: float) -> None:
    work = work / split
    work.mkdir(parents=True, exist_ok=True)
    mols = jobs(split)
    cached = {int(p.name.split(".")[0]): json.loads(p.read_text())["ok"] for p in work.glob("*.json")}
    good = {i for i, flag in cached.items() if flag} | set(_packed(split, out))
    done, ok = set(cached) | good, len(good)
    # the NCI lists give no stereo: a stereo-free copy of a test molecule is skipped, not built (index kept)
    leaks = test_constitutions() if split not in HELD_OUT_GEOM else set()
    todo = [(i, s, k, {**cfg, "split": split}) for i, (s, k) in enumerate(mols) if i not in done and flat_smiles(s) not in leaks]
    print(f"{split}: {ok} molecules done, {len(todo)} candidates left, target {n}", flush=True)
    t0 = time.time()
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=50) as pool:
        for res in pool.imap_unordered(build_molecule, todo[: max(0, int(1.3 * (n - ok)) + workers)]):
            tmp = work / f"{res['index']}.json.tmp"
            tmp.write_text(json.dumps(res))
            tmp.replace(work / f"{res['index']}.json")  # atomic: a killed run leaves no half-written molecule
            ok += res["ok"]
            if res["ok"]:
                rate = res["seconds_opt"] / max(res["n_optimised"], 1)
                print(
                    f"{split} {ok}/{n} mol {res['index']} kept {res['n_kept']} of {res['n_seeds']} seeds, "
                    f"{res['seconds']:.1f} s, {rate:.2f} s/opt",
                    flush=True,
                )
            else:
                print(f"{split} skip mol {res['index']}: {res['reason']}", flush=True)
            if ok >= n or time.time() - t0 > budget_s:
                pool.terminate()
                break


def pack(work: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"splits": {}}
    leaks = test_constitutions()
    for split in SPLITS:
        packed = _packed(split, out)
        stats = manifest["splits"].get(split, {}).get("per_molecule", {})
        for p in sorted((work / split).glob("*.json")) if (work / split).exists() else []:
            res = json.loads(p.read_text())
            if res["ok"]:
                packed[res["index"]] = res["sdf"]
                stats[str(res["index"])] = [res["n_optimised"], round(res["seconds_opt"], 3), round(res["seconds"], 3)]
        if split not in HELD_OUT_GEOM:  # no other molecule shares its constitution with the pool's (stereo aside)
            for i in [i for i, block in packed.items() if flat_smiles(block.split(">  <smiles>\n")[1].split("\n")[0]) in leaks]:
                print(f"{split}: dropping mol {i}, a held-out (test or val_geom) molecule up to stereo")
                del packed[i]
                stats.pop(str(i), None)
        if not packed:
            continue
        text = "".join(packed[i] for i in sorted(packed)).encode()
        (out / f"conformers_{split}.sdf.gz").write_bytes(gzip.compress(text, mtime=0))
        n_opt = sum(v[0] for v in stats.values())
        methods = sorted({b.split(">  <method>\n")[1].split("\n")[0] for b in text.decode().split("$$$$\n") if b.strip()})
        manifest["splits"][split] = {
            "molecules": len(packed),
            "conformers": text.decode().count("$$$$\n"),
            "method": methods,
            "sha256": hashlib.sha256(text).hexdigest(),
            "seconds_per_optimisation": round(sum(v[1] for v in stats.values()) / max(n_opt, 1), 4),
            "per_molecule": stats,
        }
        print(split, {k: v for k, v in manifest["splits"][split].items() if k != "per_molecule"})
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=SPLITS)
    ap.add_argument("--n", type=int, default=250, help="target number of molecules in the split")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--method", choices=("xtb", "mmff"), default="xtb")
    ap.add_argument("--seeds-min", type=int, default=12)
    ap.add_argument("--seeds-max", type=int, default=48)
    ap.add_argument("--cap-train", type=int, default=10, help="conformers per training molecule")
    ap.add_argument("--window-kcal", type=float, default=6.0)
    ap.add_argument("--dedupe-rmsd", type=float, default=0.125)
    ap.add_argument("--gtol", type=float, default=5e-4, help="max |gradient| in Eh/bohr")
    ap.add_argument("--maxiter", type=int, default=400)
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop taking new molecules after this many seconds")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "conformer_work")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--pack", action="store_true", help="write the packed SDFs and manifest from the work folder")
    a = ap.parse_args(argv)
    cfg = {
        "method": a.method,
        "seeds_min": a.seeds_min,
        "seeds_max": a.seeds_max,
        "cap_train": a.cap_train,
        "window_kcal": a.window_kcal,
        "dedupe_rmsd": a.dedupe_rmsd,
        "gtol": a.gtol,
        "maxiter": a.maxiter,
    }
    if a.split:
        generate(a.split, a.n, a.workers, cfg, a.work, a.out, a.budget_s)
    if a.pack:
        pack(a.work, a.out)
    if not a.split and not a.pack:
        ap.error("give --split and/or --pack")


if __name__ == "__main__":
    sys.exit(main())
