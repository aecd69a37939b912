r"""Distance diffusion on extended graphs (Zhou et al., 2024, arXiv 2403.01430): QM9-like conformers and skeletons.

``conformers-qm9``: an :class:`~geodiffusion.models.EdgeScoreModel` is fitted by distance DSM
(:func:`~geodiffusion.training.graph.distance_dsm_loss`) to the packaged training ensembles, then
:math:`2|S_r|` conformers per test molecule are drawn with the projection-free sampler and compared with the
reference ensembles :math:`S_r` by COV/MAT (heavy-atom best-alignment RMSD, :math:`\delta` = 0.5 Å), next to an
RDKit ETKDG baseline drawn in the same run with seeds (>= 10^7) disjoint from those that built the references
(< 10^6). The references are GFN2-xTB-refined ETKDG ensembles, **not GEOM**: see
:data:`~geodiffusion.data.conformers.REFERENCE_NOTE`.

``skeletons``: the same pipeline on articulated stick figures (:class:`~geodiffusion.data.skeletons.SkeletonPoses`):
bones are the graph's bonds, the extended graph adds 2-/3-hop and hop-radius edges; metrics are the bone-length
error of the samples and COV/MAT under Kabsch RMSD (mirror images identified).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor
from torch_geometric.data import Batch, Data

from geodiffusion.conformers.graph import mol_to_graph, point_cloud_graph
from geodiffusion.data.conformers import (
    REFERENCE_NOTE,
    ConformerEnsemble,
    TrainingConformerSplit,
    ValidationConformerSplit,
    load_conformers,
)
from geodiffusion.data.skeletons import SkeletonPoses
from geodiffusion.experiments.base import Experiment, ExperimentSpec, final_losses
from geodiffusion.metrics.conformers import (
    QM9_THRESHOLD,
    coverage_matching,
    heavy_atom_rmsd_matrix,
    kabsch_rmsd_matrix,
    summarise_coverage,
)
from geodiffusion.models.base import ScoreModel
from geodiffusion.processes.base import Process
from geodiffusion.processes.distance import DistanceVEProcess
from geodiffusion.registry import build
from geodiffusion.samplers.base import Sampler
from geodiffusion.spec import component_spec
from geodiffusion.training.checkpoint import load_checkpoint
from geodiffusion.training.graph import DistanceDSMValidation, GraphTrainer, GraphTrainingSpec
from geodiffusion.training.trainer import derive_seed

__all__ = [
    "ConformersQM9Experiment",
    "SkeletonsExperiment",
    "chirality_signs",
    "etkdg_conformers",
    "generate_conformers",
    "load_run_model",
    "match_chirality",
    "match_stereo",
    "redraw_diastereomers",
    "mmff_relax",
    "sample_conformers",
    "sample_ensembles",
    "sample_graphs",
    "score_ensembles",
    "stereo_correct",
    "stereo_signs",
]

ETKDG_SEED_BASE = 10_000_000  # reference ensembles were embedded with seeds < 10^6
_PROCESS = {"kind": "distance_ve", "sigma_min": 0.01, "sigma_max": 5.0}


def chirality_signs(pos: Tensor, centres: Tensor) -> Tensor:
    r"""Signs of :math:`\det[x_a - x_c, x_b - x_c, x_d - x_c]` for ``centres [K, 4]`` = (c, a, b, d); ``pos [..., N, 3]``
    -> ``[..., K]``. A reflection flips every sign; distances, and so the sampler, cannot see them."""
    c, a, b, d = (pos[..., centres[:, k], :] for k in range(4))
    return torch.sign(torch.linalg.det(torch.stack([a - c, b - c, d - c], -2)))


def match_chirality(samples: Tensor, reference: Tensor, centres: Tensor) -> Tensor:
    """Reflect (``x -> -x``) each sample ``[S, N, 3]`` whose chirality signs disagree with ``reference [N, 3]``'s
    at more than half of ``centres``: stereo is part of the molecular graph, but not of its distances."""
    if centres.numel() == 0:
        return samples
    return _reflect_to(samples, chirality_signs(reference, centres), centres)


def _reflect_to(samples: Tensor, signs: Tensor, centres: Tensor) -> Tensor:
    """Reflect each sample ``[S, N, 3]`` whose :func:`chirality_signs` at ``centres`` disagree with ``signs`` at more
    than half of them (a reflection flips all; a sample wrong at some centres only is a diastereomer, kept)."""
    if centres.numel() == 0:
        return samples
    agree = (chirality_signs(samples, centres) == signs.to(samples)).to(samples.dtype).mean(-1)
    flip = torch.where(agree < 0.5, -1.0, 1.0).to(samples.dtype)
    return samples * flip[:, None, None]


def stereo_signs(mol) -> tuple[Tensor, Tensor]:
    """The tetrahedral centres of ``mol``'s chiral tags, ``[K, 4]`` rows (centre, its first three neighbours in bond
    order), and the :func:`chirality_signs` ``[K]`` of any conformer with that stereo: +1 for ``CHI_TETRAHEDRAL_CCW``,
    -1 for ``CHI_TETRAHEDRAL_CW`` (RDKit's convention, for three neighbours and a lone pair too)."""
    from rdkit import Chem

    centres = _stereo_centres(mol)
    ccw = Chem.ChiralType.CHI_TETRAHEDRAL_CCW
    signs = [1.0 if mol.GetAtomWithIdx(c).GetChiralTag() == ccw else -1.0 for c in centres[:, 0].tolist()]
    return centres, torch.tensor(signs, dtype=torch.float64)


def stereo_correct(samples: Tensor, mol) -> Tensor:
    """``[S]`` bool: does each sample ``[S, N, 3]`` have every tagged tetrahedral centre of ``mol`` as tagged
    (:func:`stereo_signs`)? After :func:`match_stereo` a False is a diastereomer: a conformer of another molecule."""
    centres, signs = stereo_signs(mol)
    if centres.numel() == 0:
        return torch.ones(samples.shape[0], dtype=torch.bool, device=samples.device)
    return (chirality_signs(samples, centres) == signs.to(samples)).all(-1)


def match_stereo(samples: Tensor, mol) -> Tensor:
    """Reflect each sample ``[S, N, 3]`` of ``mol`` that is mirrored at more than half of its tagged tetrahedral
    centres (:func:`stereo_signs`): the stereo comes from the molecular graph, no reference conformer is needed."""
    centres, signs = stereo_signs(mol)
    return _reflect_to(samples, signs, centres)


def _stereo_centres(mol) -> Tensor:
    """(centre, three neighbours) of every atom with a tetrahedral chiral tag."""
    from rdkit import Chem

    rows = [
        [atom.GetIdx(), *[n.GetIdx() for n in atom.GetNeighbors()][:3]]
        for atom in mol.GetAtoms()
        if atom.GetChiralTag() in (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
        and atom.GetDegree() >= 3
    ]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 4)


def sample_graphs(sampler: Sampler, model, process: DistanceVEProcess, graphs: list[Data], generator, dtype) -> Tensor:
    """Coordinates for a list of graphs sampled together as one PyG batch; ``[sum N, 3]`` in list order."""
    batch = Batch.from_data_list(graphs)

    def score(t: Tensor, d: Tensor, graph: Data) -> Tensor:
        return model(t, d, graph=graph)

    with torch.no_grad():
        return sampler.sample(score, process, (batch.num_nodes, 3), generator=generator, dtype=dtype, graph=batch)


def sample_ensembles(
    sampler: Sampler, model, process: DistanceVEProcess, graphs: list[Data], counts: list[int], chunk: int, generator, dtype
) -> tuple[list[Tensor], float]:
    """``counts[k]`` samples of ``graphs[k]`` each, drawn in PyG batches of at least ``chunk`` graphs (a molecule's
    copies never split); ``model(t, d, graph=batch)`` is the score. Returns ``[counts[k], N_k, 3]`` float64 per
    graph and the wall seconds."""
    generated: list[list[Tensor]] = [[] for _ in graphs]
    pending: list[int] = []
    start = time.perf_counter()
    for k in range(len(graphs)):
        pending.extend([k] * counts[k])
        if len(pending) >= chunk or k == len(graphs) - 1:
            pos = sample_graphs(sampler, model, process, [graphs[j] for j in pending], generator, dtype)
            for j, x in zip(pending, torch.split(pos, [graphs[j].num_nodes for j in pending]), strict=True):
                generated[j].append(x)
            pending = []
    seconds = time.perf_counter() - start
    return [torch.stack(x).double() for x in generated], seconds


def redraw_diastereomers(
    sampler: Sampler,
    model,
    process: DistanceVEProcess,
    graphs: list[Data],
    mols: list,
    samples: list[Tensor],
    rounds: int,
    chunk: int,
    generator,
    dtype,
) -> tuple[list[Tensor], float]:
    """Up to ``rounds`` times, draw afresh every sample of ``samples[k]`` (stereo-matched ``[S, N, 3]`` of
    ``mols[k]``) that is not :func:`stereo_correct` (a diastereomer; of a molecule with tagged stereo, also a
    non-finite sample), the way ETKDG re-embeds a
    conformer whose chiral volumes come out wrong. Returns the samples, with the last draw kept where every round
    failed, and the wall seconds of the redraws."""
    if rounds < 0:
        raise ValueError(f"rounds: expected a non-negative count, got {rounds}")
    samples, seconds = list(samples), 0.0
    for _ in range(rounds):
        wrong = [~stereo_correct(x, m) for x, m in zip(samples, mols, strict=True)]
        redo = [k for k, w in enumerate(wrong) if w.any()]
        if not redo:
            break
        counts = [int(wrong[k].sum()) for k in redo]
        fresh, spent = sample_ensembles(sampler, model, process, [graphs[k] for k in redo], counts, chunk, generator, dtype)
        seconds += spent
        for k, x in zip(redo, fresh, strict=True):
            samples[k] = samples[k].clone()
            samples[k][wrong[k]] = match_stereo(x, mols[k]).to(samples[k])
    return samples, seconds


def sample_conformers(
    sampler: Sampler,
    model,
    process: DistanceVEProcess,
    graphs: list[Data],
    mols: list,
    counts: list[int],
    chunk: int,
    generator,
    dtype,
    *,
    match: bool = True,
    redraws: int = 0,
) -> tuple[list[Tensor], float]:
    """:func:`sample_ensembles` of molecules ``mols`` (graphs ``graphs``), each sample reflected to the tagged stereo
    (:func:`match_stereo`, with ``match``) and its diastereomers redrawn ``redraws`` rounds
    (:func:`redraw_diastereomers`); returns the samples and the wall seconds of all draws."""
    if redraws and not match:
        raise ValueError("redraws needs match: a mirror image is not a diastereomer")
    samples, seconds = sample_ensembles(sampler, model, process, graphs, counts, chunk, generator, dtype)
    if match:
        samples = [match_stereo(x, m) for x, m in zip(samples, mols, strict=True)]
    if redraws:
        samples, spent = redraw_diastereomers(sampler, model, process, graphs, mols, samples, redraws, chunk, generator, dtype)
        seconds += spent
    return samples, seconds


def score_ensembles(
    test: list[ConformerEnsemble], samples: list[Tensor], threshold: float
) -> tuple[list[dict[str, Tensor]], list[Tensor], list[bool]]:
    """COV/MAT per molecule (:func:`coverage_matching`) of ``samples[k] [S, N, 3]`` against ``test[k]``'s
    references. A molecule with a non-finite sample scores as if every sample were 1000 Å away. Returns the
    per-molecule metrics, RMSD matrices (inf where non-finite) and finiteness flags."""
    per, rmsd, finite = [], [], []
    for x, e in zip(samples, test, strict=True):
        ok = bool(torch.isfinite(x).all())
        d = heavy_atom_rmsd_matrix(e.mol, x) if ok else torch.full((e.n_conformers, x.shape[0]), float("inf"))
        per.append(coverage_matching(d.nan_to_num(1e3, 1e3), threshold))
        rmsd.append(d)
        finite.append(ok)
    return per, rmsd, finite


def diverged_molecules(test: list[ConformerEnsemble], samples: list[Tensor], factor: float = 10.0) -> list[bool]:
    """Per molecule: does a finite sample of ``samples[k] [S, N, 3]`` put an atom farther than ``factor`` times the
    references' largest atom distance from the centroid? Such samples blew up (their MAT is then meaningless)."""
    if not factor > 1:
        raise ValueError(f"factor: expected a number above 1 (a reach beyond the references'), got {factor!r}")
    out = []
    for x, e in zip(samples, test, strict=True):
        ref = e.coordinates(torch.float64)
        reach = (ref - ref.mean(-2, keepdim=True)).norm(dim=-1).max()
        y = x.to(torch.float64)
        spread = (y - y.mean(-2, keepdim=True)).norm(dim=-1).amax(-1)
        out.append(bool((torch.isfinite(spread) & (spread > factor * reach)).any()))
    return out


def mmff_relax(mol, samples: Tensor, max_iters: int = 200) -> tuple[Tensor, Tensor]:
    """MMFF94 local minimisation (RDKit's ``MMFFOptimizeMoleculeConfs``) of each sample ``[S, N, 3]`` of ``mol``
    (explicit hydrogens); returns the relaxed ``[S, N, 3]`` float64 coordinates and ``[S]`` converged flags."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    if samples.ndim != 3 or samples.shape[1:] != (mol.GetNumAtoms(), 3):
        raise ValueError(f"samples: expected [S, {mol.GetNumAtoms()}, 3] for this molecule, got {tuple(samples.shape)}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples: expected finite coordinates (a blown-up sample cannot be relaxed)")
    if max_iters < 1:
        raise ValueError(f"max_iters: expected a positive count, got {max_iters}")
    if not AllChem.MMFFHasAllMoleculeParams(mol):
        raise ValueError(f"mol {Chem.MolToSmiles(mol)!r}: MMFF94 has no parameters for some of its atoms")
    m = Chem.Mol(mol)
    m.RemoveAllConformers()
    for xyz in samples.double().cpu().numpy():
        conf = Chem.Conformer(m.GetNumAtoms())
        conf.SetPositions(xyz)
        m.AddConformer(conf, assignId=True)
    result = AllChem.MMFFOptimizeMoleculeConfs(m, numThreads=1, maxIters=max_iters)
    xyz = torch.stack([torch.from_numpy(c.GetPositions()) for c in m.GetConformers()])
    return xyz, torch.tensor([flag == 0 for flag, _ in result])


def wrong_stereo_fraction(test: list[ConformerEnsemble], samples: list[Tensor]) -> float:
    """Fraction of the samples of molecules with tagged tetrahedral stereo that have a centre mirrored
    (:func:`stereo_correct`); NaN when no molecule has tagged stereo."""
    flags = [~stereo_correct(x, e.mol) for x, e in zip(samples, test, strict=True) if _stereo_centres(e.mol).numel()]
    return float(torch.cat(flags).double().mean()) if flags else float("nan")


def load_run_model(run: str | Path) -> tuple[ScoreModel, dict]:
    """The network a finished ``conformers-qm9`` or ``skeletons`` run sampled with, in eval mode, and the run's
    spec (``spec.json``): the best-validation EMA weights under ``select="best_val"``, else the last EMA weights."""
    run = Path(run)
    paths = run / "spec.json", run / "model" / "checkpoints" / "last.pt"
    for path in paths:
        if not path.is_file():
            raise ValueError(f"run: expected a finished run folder with {path.relative_to(run)}, found none in {run}")
    spec = json.loads(paths[0].read_text())
    state = load_checkpoint(paths[1])
    model = build(state["model_spec"], ScoreModel)
    best = state.get("best_ema") if spec.get("select") == "best_val" else None
    model.load_state_dict(best if best is not None else state["ema"]["model"])
    return model.eval(), spec


def generate_conformers(
    run: str | Path,
    molecules: Sequence,
    n: int | Sequence[int],
    *,
    seed: int = 0,
    chunk: int | None = None,
    device: str | torch.device | None = None,
    relax: bool = False,
    stereo_redraws: int | None = None,
) -> list:
    """``n`` (or ``n[k]``) conformers of each molecule from a finished ``conformers-qm9`` run: the run's network,
    extended graph (``max_hops``), sampler and dtype, reflected to each molecule's tagged stereo (:func:`match_stereo`).

    ``molecules``: RDKit ``Mol`` objects with explicit hydrogens, or SMILES (hydrogens are added). Molecules are
    sampled together in PyG batches of at least ``chunk`` graphs (default: the run's ``sample_chunk``), so with
    the run's test molecules, their counts and ``seed=derive_seed(spec["seed"], "sample")`` this redraws the
    run's own samples. ``stereo_redraws`` rounds redraw the diastereomers (:func:`redraw_diastereomers`; default:
    the run's ``stereo_redraws``). ``relax=True`` minimises each conformer with MMFF94 (:func:`mmff_relax`, 200 iterations).
    Returns copies of the molecules holding only the new conformers (Å), each with the bool property
    ``stereo_correct`` (:func:`stereo_correct`: distances cannot pin every centre, so some samples are
    diastereomers); a sample with a non-finite coordinate raises ValueError rather than being returned.
    """
    from rdkit import Chem

    counts = [n] * len(molecules) if isinstance(n, int) else list(n)
    if len(counts) != len(molecules):
        raise ValueError(f"n: expected one count per molecule ({len(molecules)}), got {len(counts)}")
    if not molecules or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in counts):
        raise ValueError(f"n: expected positive integer counts for a non-empty list of molecules, got {n!r}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk: expected a positive number of graphs, got {chunk}")
    if stereo_redraws is not None and stereo_redraws < 0:
        raise ValueError(f"stereo_redraws: expected a non-negative count, got {stereo_redraws}")
    mols = []
    for k, m in enumerate(molecules):
        if isinstance(m, str):
            parsed = Chem.MolFromSmiles(m)
            if parsed is None:
                raise ValueError(f"molecules[{k}]: RDKit cannot parse the SMILES {m!r}")
            m = Chem.AddHs(parsed)
        elif not isinstance(m, Chem.Mol):
            raise TypeError(f"molecules[{k}]: expected an rdkit Chem.Mol or a SMILES string, got {type(m).__name__}")
        mols.append(m)
    model, spec = load_run_model(run)
    if "max_hops" not in spec:
        raise ValueError(f"run: expected a conformers-qm9 run (its spec.json has max_hops), got {Path(run)}")
    graphs = [mol_to_graph(m, conformer=None, max_hops=spec["max_hops"]) for m in mols]  # bad molecules raise here
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = getattr(torch, spec["dtype"])
    model = model.to(device=device, dtype=dtype)
    process = build(spec["process"], Process)
    sampler = build(spec["sampler"], Sampler)
    generator = torch.Generator().manual_seed(seed)
    graphs = [g.to(device) for g in graphs]
    chunk = chunk or spec["sample_chunk"]
    redraws = spec.get("stereo_redraws", 0) if stereo_redraws is None else stereo_redraws
    samples, _ = sample_conformers(sampler, model, process, graphs, mols, counts, chunk, generator, dtype, redraws=redraws)
    out = []
    for k, (m, x) in enumerate(zip(mols, samples, strict=True)):
        x = x.cpu()
        if not torch.isfinite(x).all():
            raise ValueError(f"molecules[{k}]: the network produced a non-finite sample (a blow-up); try another seed")
        if relax:
            x, _ = mmff_relax(m, x)
        mol = Chem.Mol(m)
        mol.RemoveAllConformers()
        for xyz, ok in zip(x.numpy(), stereo_correct(x, m).tolist(), strict=True):
            conf = Chem.Conformer(mol.GetNumAtoms())
            conf.SetPositions(xyz)
            conf.SetBoolProp("stereo_correct", ok)
            mol.AddConformer(conf, assignId=True)
        out.append(mol)
    return out


def etkdg_conformers(test: list[ConformerEnsemble], counts: list[int], seed: int = 0) -> tuple[list[Tensor], float]:
    """RDKit ETKDGv3 baseline: ``counts[k]`` conformers of ``test[k]``, one ``EmbedMolecule`` each with seed
    ``10^7 + 10^6 seed + 1000 k + j`` (disjoint from the references' seeds < 10^6); an embedding that fails is
    retried from random coordinates (``useRandomCoords``, RDKit's advice for strained cages), then skipped.
    Returns the coordinates ``[<= counts[k], N_k, 3]`` per molecule and the wall seconds."""
    from rdkit import Chem
    from rdkit.Chem import AllChem, rdDistGeom

    params, fallback = rdDistGeom.ETKDGv3(), rdDistGeom.ETKDGv3()
    fallback.useRandomCoords = True
    out: list[Tensor] = []
    start = time.perf_counter()
    for e, n in zip(test, counts, strict=True):
        mol = Chem.Mol(e.mol)
        xyz = []
        for j in range(n):
            for p in (params, fallback):
                p.randomSeed = ETKDG_SEED_BASE + 1_000_000 * seed + 1000 * e.index + j
                if AllChem.EmbedMolecule(mol, p) == 0:
                    xyz.append(torch.from_numpy(mol.GetConformer().GetPositions()))
                    break
        out.append(torch.stack(xyz) if xyz else torch.zeros(0, e.n_atoms, 3, dtype=torch.float64))
    return out, time.perf_counter() - start


class _GraphDiffusionSpec(ExperimentSpec):
    process: component_spec(Process) = Field(_PROCESS, description="distance_ve process of the edge distances")
    model: component_spec(ScoreModel) = Field(
        {"kind": "edge_score", "hidden": 96, "layers": 4, "rbf": 32, "rbf_max": 8.0, "process": _PROCESS},
        description="edge score network; its process (1/s_t preconditioning) must equal process",
    )
    sampler: component_spec(Sampler) = Field(
        {
            "kind": "projection_free",
            "steps": 100,
            "mode": "sde",
            "projection": "pseudo_inverse",
            "corrector_steps": 1,
            "cg_iterations": 10,
        },
        description="projection-free sampler (100 steps: the paper's setting). 10 CGLS iterations: with an exact per-edge "
        "score as many samples land within 0.5 A as with 100 (75.8%, 48 molecules x 8 seeds) at 1/7 of the time "
        "(scripts/oracle_recovery.py --molecules 48 --rows default,cg100)",
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="dtype of model and sampling")
    sample_chunk: int = Field(2000, ge=1, description="graphs sampled together in one batch")

    @model_validator(mode="after")
    def _same_process(self):
        proc = getattr(self.model, "process", None)
        if proc is not None and proc.model_dump() != self.process.model_dump():
            raise ValueError("model.process must equal process (the preconditioning must use the diffusion's own s_t)")
        if self.process.kind != "distance_ve":
            raise ValueError(f"process: expected distance_ve, got {self.process.kind!r}")
        if self.sampler.kind != "projection_free":
            raise ValueError(f"sampler: expected projection_free, got {self.sampler.kind!r}")
        return self


class _GraphDiffusion(Experiment):
    threads = 1  # small graphs; on shared cores extra intra-op threads oversubscribe

    def _train(self, graphs, conformers, out_dir: Path, device, progress, val=None):
        """Fit the edge score model; ``val``: (graphs, conformers) whose held-out DSM loss is tracked at checkpoints."""
        s = self.spec
        dtype = getattr(torch, s.dtype)
        process = build(s.process, Process)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(s.seed, "init"))
            model = build(s.model, ScoreModel).to(dtype)
        validation = None
        if val is not None:
            t = s.training
            validation = DistanceDSMValidation(
                process,
                *val,
                seed=derive_seed(s.seed, "validation"),
                eps=t.eps,
                weighting=t.weighting,
                sigma_data=t.sigma_data,
                chunk=s.sample_chunk,
            )
        trainer = GraphTrainer(
            model, process, graphs, conformers, s.training, out_dir / "model", device, progress, validation=validation
        )
        losses = trainer.fit()
        return trainer, process, losses

    def _plot_losses(self, ax, losses: list[float], val_history: Sequence[tuple[int, float]] = ()) -> None:
        values = torch.tensor(losses, dtype=torch.float64)
        width = max(1, len(values) // 50)
        smooth = values.unfold(0, width, 1).mean(-1) if len(values) >= width else values
        ax.plot(np.arange(len(smooth)) + width, smooth.numpy(), label="training (smoothed)")
        if val_history:
            steps, vals = zip(*val_history, strict=True)
            ax.plot(steps, vals, "o-", ms=3, label="validation")
            ax.legend()
        ax.set(xlabel="step", ylabel="distance DSM loss", yscale="log", title="training")


class ConformersQM9Experiment(_GraphDiffusion, kind="conformers-qm9"):
    r"""Conformer generation on the packaged QM9-like ensembles: edge-score model vs RDKit ETKDG.

    Metrics (COV in %, MAT in Å, mean and median over test molecules): ``model_cov_r_mean``, ``model_mat_r_mean``,
    ``model_cov_p_mean``, ``model_mat_p_mean`` (and ``_median``), the same with prefix ``etkdg_``;
    ``model_conformers_per_second``, ``etkdg_conformers_per_second``, ``speed_ratio_model_over_etkdg``,
    ``etkdg_failed_molecules`` (no embedding from any seed: COV 0, left out of the ETKDG MAT);
    ``model_nonfinite_molecules`` and ``model_diverged_molecules`` (a finite sample 10 times farther out than the
    references, see :func:`diverged_molecules`); ``model_wrong_stereo_fraction`` (:func:`wrong_stereo_fraction`);
    ``n_test_molecules``, ``n_reference_conformers``, ``n_train_molecules``, ``train_seconds``, ``final_loss`` and
    ``final_loss_median`` (mean and median training loss of the last 10% of steps: the mean carries rare spikes);
    with a validation split (``n_val`` not 0): ``n_val_molecules``, ``val_loss_final``, ``val_loss_best``,
    ``val_best_step`` (held-out distance DSM loss of the EMA model at each checkpoint, fixed noise) and
    ``sampled_step`` (the step whose EMA weights sampled the test set, see ``select``);
    ``references_are_xtb_refined_not_geom`` (1: GFN2-xTB-refined, 0: the MMFF fallback; never GEOM).
    Plot: ``conformers.png`` (loss, COV-R against the threshold, per-molecule MAT-R of both methods).
    """

    quick_overrides = {
        "n_train": 64,
        "n_test": 12,
        "n_val": 8,
        "max_atoms": 21,
        "model": {"hidden": 32, "layers": 3, "rbf": 16},
        "training": {"steps": 1000, "batch_size": 16, "lr": 2e-3, "ema_decay": 0.99, "checkpoint_every": 250, "log_every": 25},
    }

    class Spec(_GraphDiffusionSpec):
        """conformers-qm9: distance diffusion on xTB-refined QM9-like ensembles, with an ETKDG baseline."""

        model: component_spec(ScoreModel) = Field(
            {
                "kind": "edge_score", "hidden": 96, "layers": 4, "rbf": 32, "rbf_max": 8.0, "process": _PROCESS,
                "edge_update": True,
            },
            description="edge score network; its process (1/s_t preconditioning) must equal process. Edge updates beat "
            "the plain edge layer in all 6 paired samplings at 30000 steps and in mean COV-R/MAT-R at two seeds of "
            "the 6000-step default, with no blow-ups (docs/results.rst, 'Edge updates by default')",
        )  # fmt: skip

        training: GraphTrainingSpec = Field(
            GraphTrainingSpec(
                steps=6000, batch_size=32, lr=1e-3, ema_decay=0.999, checkpoint_every=500, log_every=50,
                learned_weighting=True,
            ),
            description="optimisation settings; the learned weighting u(t) beat sigma2 by 3.0 and 3.7 points of mean COV-R "
            "at two training seeds (docs/results.rst, 'Loss weighting across noise levels')",
        )  # fmt: skip
        train_splits: list[TrainingConformerSplit] = Field(
            ["train"],
            min_length=1,
            description="packaged splits to train on, concatenated in this order: 'train' (QM9-like NCI molecules), "
            "'train_geom' (GEOM-QM9 list molecules beyond the test split's pool), 'train_pubchem' (QM9-like "
            "PubChem molecules listed by the chemicals package) and 'train_rings' (QM9-like molecules with a 3- or "
            "4-membered ring, one edit away from train_geom's)",
        )
        n_train: int | None = Field(None, ge=1, description="training molecules (None: all packaged)")
        n_test: int | None = Field(None, ge=1, description="test molecules (None: all packaged)")
        val_split: ValidationConformerSplit = Field(
            "val",
            description="held-out molecules scored at every checkpoint: 'val' (QM9-like NCI molecules) or 'val_geom' "
            "(GEOM-QM9 list molecules drawn like the test ones, rich in the test split's small ring systems)",
        )
        n_val: int | None = Field(
            None, ge=0, description="validation molecules, scored at every checkpoint (None: all packaged; 0: none)"
        )
        select: Literal["last", "best_val"] = Field(
            "last", description="EMA weights that sample the test set: the last step's, or the lowest validation loss's"
        )
        max_atoms: int | None = Field(None, ge=2, description="drop molecules with more atoms (with H)")
        threshold: float = Field(QM9_THRESHOLD, gt=0, description="COV threshold delta in Angstrom")
        samples_per_reference: int = Field(2, ge=1, description="generated conformers per reference conformer")
        max_hops: int | None = Field(
            3, ge=3, description="graph: also join all pairs up to this many bonds apart (None: all pairs); 3 is the paper's"
        )
        match_chirality: bool = Field(True, description="reflect samples whose tetrahedral stereo is mirrored")
        stereo_redraws: int = Field(
            8,
            ge=0,
            description="rounds of drawing afresh the samples that are diastereomers of the test molecule "
            "(redraw_diastereomers, as ETKDG re-embeds wrong chiral volumes; 0: the paper's sampler alone); needs "
            "match_chirality. 2 rounds raised COV-R from 78.1/79.2% to 86.2/86.6% on two samplings, 4 rounds to "
            "87.6/88.0%, 8 rounds to 88.3/88.6% (docs/results.rst, 'Redrawing diastereomers')",
        )
        etkdg: bool = Field(True, description="also run the RDKit ETKDG baseline")

        @model_validator(mode="after")
        def _batch(self):
            if self.n_train is not None and self.training.batch_size > self.n_train:
                raise ValueError(f"training.batch_size ({self.training.batch_size}) exceeds n_train ({self.n_train})")
            if len(set(self.train_splits)) != len(self.train_splits):
                raise ValueError(f"train_splits: each split at most once, got {self.train_splits}")
            if self.stereo_redraws and not self.match_chirality:
                raise ValueError(
                    "stereo_redraws needs match_chirality: a mirror image is not a diastereomer (set stereo_redraws to 0)"
                )
            if self.select == "best_val" and self.n_val == 0:
                raise ValueError("select='best_val' needs validation molecules: n_val must not be 0")
            return self

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        train: list[ConformerEnsemble] = []
        for split in s.train_splits:  # parse only as many molecules as n_train still needs
            left = None if s.n_train is None else s.n_train - len(train)
            if left == 0:
                break
            train += load_conformers(split, limit=left, max_atoms=s.max_atoms)
        test = load_conformers("test", limit=s.n_test, max_atoms=s.max_atoms)
        val = load_conformers(s.val_split, limit=s.n_val, max_atoms=s.max_atoms) if s.n_val != 0 else []
        if s.select == "best_val" and not val:
            raise ValueError(f"select='best_val': no validation molecule has at most max_atoms={s.max_atoms} atoms")
        graphs = [e.graph(max_hops=s.max_hops) for e in train]
        val_items = ([e.graph(max_hops=s.max_hops) for e in val], [e.coordinates(dtype) for e in val]) if val else None
        trainer, process, losses = self._train(
            graphs, [e.coordinates(dtype) for e in train], out_dir, device, progress, val_items
        )
        # under torchrun only rank 0 validates (the other ranks' samples go to a scratch folder)
        model = trainer.best_model() if s.select == "best_val" and trainer.is_main else trainer.ema_model
        sampler = build(s.sampler, Sampler)

        # model: all test molecules' 2K copies in chunks of one PyG batch each
        sample_gen = torch.Generator().manual_seed(derive_seed(s.seed, "sample"))
        counts = [s.samples_per_reference * e.n_conformers for e in test]
        test_graphs = [e.graph(max_hops=s.max_hops) for e in test]
        samples, model_seconds = sample_conformers(
            sampler, model, process, test_graphs, [e.mol for e in test], counts, s.sample_chunk, sample_gen, dtype,
            match=s.match_chirality, redraws=s.stereo_redraws,
        )  # fmt: skip
        per_model, rmsd_model, finite = score_ensembles(test, samples, s.threshold)
        per_etkdg, rmsd_etkdg = [], []
        metrics: dict[str, float] = {
            **summarise_coverage(per_model, "model_"),
            "model_conformers_per_second": sum(counts) / model_seconds,
            "model_sample_seconds": model_seconds,
            "model_nonfinite_molecules": float(sum(not ok for ok in finite)),
            "model_diverged_molecules": float(sum(diverged_molecules(test, samples))),
            "model_wrong_stereo_fraction": wrong_stereo_fraction(test, samples),
        }
        if s.etkdg:
            etkdg_samples, etkdg_seconds = etkdg_conformers(test, counts, s.seed)
            embedded = [x.shape[0] > 0 for x in etkdg_samples]
            for x, e, ok in zip(etkdg_samples, test, embedded, strict=True):
                d = heavy_atom_rmsd_matrix(e.mol, x) if ok else None
                rmsd_etkdg.append(d)
                if d is not None:
                    per_etkdg.append(coverage_matching(d, s.threshold))
            # a molecule ETKDG cannot embed covers nothing (COV 0) and has no matching distance: MAT is over the rest
            failed = len(test) - len(per_etkdg)
            zero = torch.zeros((), dtype=torch.float64)
            covs = per_etkdg + [{"cov_r": zero, "cov_p": zero, "mat_r": zero, "mat_p": zero}] * failed
            summary = summarise_coverage(covs, "etkdg_")
            if per_etkdg:
                matched = summarise_coverage(per_etkdg, "etkdg_")
                summary.update({k: v for k, v in matched.items() if "_mat_" in k})
            else:
                summary.update({k: float("inf") for k in summary if "_mat_" in k})
            metrics.update(summary)
            metrics["etkdg_failed_molecules"] = float(failed)
            metrics["etkdg_conformers_per_second"] = sum(x.shape[0] for x in etkdg_samples) / etkdg_seconds
            metrics["speed_ratio_model_over_etkdg"] = (
                metrics["model_conformers_per_second"] / metrics["etkdg_conformers_per_second"]
            )
        metrics.update(final_losses(losses))
        metrics.update(
            {
                "n_train_molecules": float(len(train)),
                "n_test_molecules": float(len(test)),
                "n_reference_conformers": float(sum(e.n_conformers for e in test)),
                "threshold": s.threshold,
                "sampler_steps": float(s.sampler.steps),
                "train_seconds": trainer.train_seconds,
                "references_are_xtb_refined_not_geom": float(all(e.method == "GFN2-xTB" for e in test)),
            }
        )
        if trainer.val_history:
            best_step, best = trainer.best_validation
            metrics.update(
                {
                    "n_val_molecules": float(len(val)),
                    "val_loss_final": trainer.val_history[-1][1],
                    "val_loss_best": best,
                    "val_best_step": float(best_step),
                    "sampled_step": float(best_step if s.select == "best_val" else trainer.step),
                }
            )
        (out_dir / "REFERENCES.txt").write_text(
            f"{REFERENCE_NOTE}; methods: {sorted({e.method for e in test})}\n", encoding="utf-8"
        )
        torch.save({"smiles": [e.smiles for e in test], "model": samples}, out_dir / "samples.pt")
        self._plot(out_dir / "conformers.png", losses, rmsd_model, rmsd_etkdg, trainer.val_history)
        return metrics

    def _plot(
        self,
        path: Path,
        losses: list[float],
        rmsd_model: list[Tensor],
        rmsd_etkdg: list[Tensor | None],
        val_history: list[tuple[int, float]],
    ) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(15, 4), layout="constrained")
        ax_loss, ax_cov, ax_mat = fig.subplots(1, 3)
        self._plot_losses(ax_loss, losses, val_history)
        grid = torch.linspace(0.0, 1.5, 61, dtype=torch.float64)
        for name, mats in (("model", rmsd_model), ("ETKDG", rmsd_etkdg)):
            if not mats:
                continue
            # a molecule without conformers (ETKDG failure) covers nothing at any threshold
            best = [m.nan_to_num(1e3, 1e3).min(1).values if m is not None else torch.full((1,), 1e3) for m in mats]
            cov = torch.stack([torch.stack([(b <= d).double().mean() for b in best]).mean() for d in grid])
            ax_cov.plot(grid.numpy(), 100 * cov.numpy(), label=name)
        ax_cov.axvline(self.spec.threshold, color="grey", ls=":")
        ax_cov.set(xlabel="threshold (Å)", ylabel="COV-R (%)", title="coverage vs threshold")
        ax_cov.legend()
        pairs = [(m, e) for m, e in zip(rmsd_model, rmsd_etkdg, strict=False) if e is not None]
        if pairs:
            a = torch.stack([m.nan_to_num(1e3, 1e3).min(1).values.mean() for m, _ in pairs]).clamp_max(3)
            b = torch.stack([e.min(1).values.mean() for _, e in pairs]).clamp_max(3)
            ax_mat.scatter(b.numpy(), a.numpy(), s=8)
            top = float(max(a.max(), b.max()))
            ax_mat.plot([0, top], [0, top], color="grey", ls=":")
            ax_mat.set(xlabel="ETKDG MAT-R (Å)", ylabel="model MAT-R (Å)", title="per test molecule")
        fig.savefig(path, dpi=100)


class SkeletonsExperiment(_GraphDiffusion, kind="skeletons"):
    r"""Articulated stick figures through the same extended-graph distance diffusion.

    Metrics: ``bone_length_error`` (mean :math:`|d_{bone} - \ell|` of the samples, in bone units) and
    ``bone_length_error_init`` (of the prior draws, for scale); ``cov_r``, ``mat_r``, ``cov_p``, ``mat_p`` (Kabsch
    RMSD with reflections, threshold ``threshold``) of ``n_samples`` samples against ``n_reference`` fresh poses,
    and the same for fresh data poses (``data_cov_r`` ...: the finite-sample ceiling); ``train_seconds``,
    ``final_loss`` (and ``final_loss_median``), ``samples_per_second``. Plot: ``skeletons.png``.
    """

    quick_overrides = {
        "n_train": 512,
        "n_reference": 32,
        "model": {"hidden": 32, "layers": 2, "rbf": 16},
        "training": {"steps": 200, "batch_size": 32, "lr": 2e-3, "ema_decay": 0.99, "checkpoint_every": 100, "log_every": 25},
        "sampler": {"steps": 50},
    }

    class Spec(_GraphDiffusionSpec):
        """skeletons: distance diffusion of articulated stick figures (bones, 2-/3-hop and radius edges)."""

        data: SkeletonPoses = Field(default_factory=SkeletonPoses, description="the pose distribution")
        training: GraphTrainingSpec = Field(
            GraphTrainingSpec(steps=3000, batch_size=64, lr=1e-3, ema_decay=0.999, checkpoint_every=500, log_every=50),
            description="optimisation settings",
        )
        n_train: int = Field(4096, ge=1, description="training poses")
        n_reference: int = Field(128, ge=1, description="reference poses of the coverage metrics")
        threshold: float = Field(0.5, gt=0, description="COV threshold in bone-length units")

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        data_gen = torch.Generator().manual_seed(derive_seed(s.seed, "data"))
        train = s.data.sample(s.n_train, data_gen, dtype)
        reference = s.data.sample(s.n_reference, data_gen, torch.float64)
        fresh = s.data.sample(2 * s.n_reference, data_gen, torch.float64)
        bones = s.data.bones()
        graph = point_cloud_graph(bonds=bones, num_nodes=s.data.n_joints)
        # one graph, many poses: the trainer sees a single item with all training poses as its conformers
        trainer, process, losses = self._train(
            [graph] * s.training.batch_size, [train] * s.training.batch_size, out_dir, device, progress
        )
        sampler = build(s.sampler, Sampler)
        sample_gen = torch.Generator().manual_seed(derive_seed(s.seed, "sample"))
        n = 2 * s.n_reference
        start = time.perf_counter()
        pos = sample_graphs(sampler, trainer.ema_model, process, [graph] * n, sample_gen, dtype)
        seconds = time.perf_counter() - start
        samples = pos.reshape(n, s.data.n_joints, 3).double()
        lengths = s.data.bone_lengths()

        def bone_error(x: Tensor) -> float:
            return float(((x[:, bones[0]] - x[:, bones[1]]).norm(dim=-1) - lengths).abs().mean())

        init = process.coordinate_prior_std * torch.randn(
            n, s.data.n_joints, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        )
        metrics = {
            "bone_length_error": bone_error(samples),
            "bone_length_error_init": bone_error(init),
            "bone_length_error_data": bone_error(fresh),
            "samples_per_second": n / seconds,
            "train_seconds": trainer.train_seconds,
            **final_losses(losses),
        }
        finite = bool(torch.isfinite(samples).all())
        d_model = kabsch_rmsd_matrix(reference, samples, reflections=True) if finite else torch.full((s.n_reference, n), 1e3)
        d_data = kabsch_rmsd_matrix(reference, fresh, reflections=True)
        for prefix, d in (("", d_model), ("data_", d_data)):
            metrics.update({f"{prefix}{k}": float(v) for k, v in coverage_matching(d, s.threshold).items()})
        torch.save({"reference": reference, "samples": samples}, out_dir / "samples.pt")
        self._plot(out_dir / "skeletons.png", losses, reference, samples, bones)
        return metrics

    def _plot(self, path: Path, losses: list[float], reference: Tensor, samples: Tensor, bones: Tensor) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(13, 4), layout="constrained")
        ax_loss = fig.add_subplot(1, 3, 1)
        self._plot_losses(ax_loss, losses)
        for col, (title, x) in enumerate((("reference poses", reference), ("generated poses", samples)), start=2):
            ax = fig.add_subplot(1, 3, col, projection="3d")
            for k, pose in enumerate(x[:6].numpy()):
                offset = np.array([3.5 * (k % 3), 3.5 * (k // 3), 0.0])
                for i, j in bones.T.tolist():
                    seg = np.stack([pose[i], pose[j]]) + offset
                    ax.plot(seg[:, 0], seg[:, 1], seg[:, 2], color=f"C{k}")
            ax.set(title=title)
        fig.savefig(path, dpi=90)
