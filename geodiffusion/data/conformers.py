r"""GEOM-like conformer ensembles shipped with the package (``files/conformers/``), checksum-verified.

Each molecule is an RDKit ``Mol`` with explicit hydrogens whose conformers are the reference ensemble
:math:`S_r`: ETKDG seeds refined by GFN2-xTB (``method = "GFN2-xTB"``; an MMFF94-refined fallback is labelled
``"MMFF94"``), cut to an energy window and RMSD-de-duplicated by ``scripts/make_conformer_dataset.py``.
**These are xTB-refined references, not GEOM's CREST ensembles**: metrics against them are not comparable
with published GEOM-QM9 numbers. Splits are by molecule; ``test`` molecules come from the GEOM-QM9 test list
(GeoMol split), ``train``/``val`` from QM9-like NCI molecules in the rdkit wheel. See ``PROVENANCE.md`` there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CONFORMER_SPLITS",
    "REFERENCE_NOTE",
    "ConformerEnsemble",
    "ConformerSplit",
    "TrainingConformerSplit",
    "ValidationConformerSplit",
    "conformer_manifest",
    "load_conformers",
]

#: the splits a model may train on
TrainingConformerSplit = Literal["train", "train_geom", "train_pubchem", "train_rings"]
#: the held-out splits a run may validate on: QM9-like NCI molecules, or GEOM-QM9 list molecules drawn like the test ones
ValidationConformerSplit = Literal["val", "val_geom"]
ConformerSplit = Literal[TrainingConformerSplit, ValidationConformerSplit, "test"]
CONFORMER_SPLITS: tuple[str, ...] = get_args(ConformerSplit)
REFERENCE_NOTE = "references are GFN2-xTB-refined ETKDG ensembles made offline, not GEOM (CREST) conformers"


@dataclass(frozen=True)
class ConformerEnsemble:
    """One molecule and its reference conformers.

    ``mol``: RDKit ``Mol`` with explicit H and ``n_conformers`` conformers (lowest energy first);
    ``cap``: the GEOM (CREST) conformer count for test molecules, the per-molecule cap otherwise;
    ``rel_energy_kcal``: energies above the ensemble minimum; ``method``: the refining level of theory.
    """

    index: int
    smiles: str
    mol: Any
    cap: int
    method: str
    rel_energy_kcal: tuple[float, ...]

    @property
    def n_conformers(self) -> int:
        return self.mol.GetNumConformers()

    @property
    def n_atoms(self) -> int:
        return self.mol.GetNumAtoms()

    def coordinates(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """Reference coordinates ``[C, N, 3]`` in Å."""
        return torch.from_numpy(np.stack([c.GetPositions() for c in self.mol.GetConformers()])).to(dtype)

    def graph(self, min_degree: int = 4, max_hops: int | None = 3):
        """The extended graph (:func:`geodiffusion.conformers.mol_to_graph`) without coordinates."""
        from geodiffusion.conformers.graph import mol_to_graph

        return mol_to_graph(self.mol, conformer=None, min_degree=min_degree, max_hops=max_hops)


def _files():
    return resources.files("geodiffusion.data").joinpath("files/conformers")


@lru_cache(maxsize=1)
def conformer_manifest() -> dict[str, Any]:
    """The packaged ``manifest.json``: per split, molecule and conformer counts, method, SHA-256 and timings."""
    return json.loads(_files().joinpath("manifest.json").read_text(encoding="utf-8"))


def load_conformers(split: str, *, limit: int | None = None, max_atoms: int | None = None) -> list[ConformerEnsemble]:
    """The molecules of ``split`` (one of :data:`CONFORMER_SPLITS`) in packaged order, checksum-verified.

    ``limit`` keeps the first molecules (after dropping those with more than ``max_atoms`` atoms).
    """
    if split not in CONFORMER_SPLITS:
        raise ValueError(f"split: expected one of {CONFORMER_SPLITS}, got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit: expected a positive count, got {limit}")
    if max_atoms is not None and max_atoms < 2:
        raise ValueError(f"max_atoms: expected at least 2, got {max_atoms}")
    entry = conformer_manifest()["splits"].get(split)
    if entry is None:
        raise ValueError(f"split {split!r} is not packaged; run scripts/make_conformer_dataset.py --split {split} --pack")
    raw = gzip.decompress(_files().joinpath(f"conformers_{split}.sdf.gz").read_bytes())
    if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
        raise RuntimeError(f"conformers_{split}.sdf.gz: checksum mismatch, the packaged data are corrupted")
    return [e for e in _parse(raw) if max_atoms is None or e.n_atoms <= max_atoms][: limit if limit is not None else None]


def _parse(raw: bytes) -> list[ConformerEnsemble]:
    from rdkit import Chem

    out: list[ConformerEnsemble] = []
    current: dict[str, Any] | None = None
    for record in Chem.ForwardSDMolSupplier(io.BytesIO(raw), removeHs=False, sanitize=True):
        if record is None:
            raise RuntimeError("a packaged conformer record failed to parse")
        index = record.GetIntProp("mol_index")
        if current is None or current["index"] != index:
            if current is not None:
                out.append(_ensemble(current))
            current = {"index": index, "mol": Chem.Mol(record), "energies": []}
            current["mol"].RemoveAllConformers()
        current["mol"].AddConformer(Chem.Conformer(record.GetConformer()), assignId=True)
        current["energies"].append(record.GetDoubleProp("rel_energy_kcal"))
        current["record"] = record
    if current is not None:
        out.append(_ensemble(current))
    return out


def _ensemble(state: dict[str, Any]) -> ConformerEnsemble:
    record = state["record"]
    mol = state["mol"]
    for key in list(mol.GetPropNames()):
        mol.ClearProp(key)
    return ConformerEnsemble(
        index=state["index"],
        smiles=record.GetProp("smiles"),
        mol=mol,
        cap=record.GetIntProp("ref_cap"),
        method=record.GetProp("method"),
        rel_energy_kcal=tuple(state["energies"]),
    )
