"""Conformer and skeleton pipelines: packaged ensembles, distance DSM training with exact resume, the transpose
corrector's step size, chirality matching, and the conformers-qm9 / skeletons experiments end to end (tiny)."""

from __future__ import annotations

import itertools
import json
import math
import runpy
import shutil
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor
from torch_geometric.data import Batch

import geodiffusion as gd
import geodiffusion.experiments.conformers as conformer_experiments
from geodiffusion.cli import main as cli_main
from geodiffusion.conformers import edge_vectors, mol_to_graph, point_cloud_graph
from geodiffusion.conformers.oracle import EnsembleScore
from geodiffusion.data import conformers as conformer_data
from geodiffusion.data.conformers import load_conformers
from geodiffusion.data.skeletons import SkeletonPoses
from geodiffusion.experiments.conformers import (
    ConformersQM9Experiment,
    SkeletonsExperiment,
    chirality_signs,
    generate_conformers,
    match_chirality,
    match_stereo,
    stereo_correct,
    stereo_signs,
)
from geodiffusion.models.edge import EdgeScoreModel
from geodiffusion.processes.distance import DistanceVEProcess, NoncentralChi3
from geodiffusion.samplers.projection_free import DistanceToCoordinates, ProjectionFreeSampler
from geodiffusion.training.graph import (
    DistanceDSMValidation,
    GraphTrainer,
    GraphTrainingSpec,
    NoiseLevelLogWeight,
    _distance_dsm,
    distance_dsm_loss,
    distance_dsm_weight,
)
from geodiffusion.training.trainer import derive_seed

Chem = pytest.importorskip("rdkit.Chem")
AllChem = pytest.importorskip("rdkit.Chem.AllChem")

TINY_MODEL = {"hidden": 16, "layers": 1, "rbf": 8}


@pytest.fixture(scope="module")
def molecule():
    mol = Chem.AddHs(Chem.MolFromSmiles("CC(O)C(=O)NCc1ccccc1"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    return mol_to_graph(mol)


# --- the transpose corrector --------------------------------------------------------------------------


def test_transpose_corrector_stays_finite_and_close_on_a_molecule(molecule):
    """The bare 1/2 J^T corrector diverged to NaN on this molecule; the 1/max-degree step does not."""
    process = DistanceVEProcess(sigma_max=5.0)
    x0 = molecule.pos.double()
    _, d0 = edge_vectors(x0, molecule.edge_index)

    def oracle(t, d, graph=None):  # the exact per-edge transition score toward the true distances
        return process.marginal(d0, t[0]).score(d)

    sampler = ProjectionFreeSampler(steps=100, mode="ode", projection="transpose", corrector_steps=2)
    x = sampler.sample(
        oracle, process, (molecule.num_nodes, 3), graph=molecule, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    assert bool(torch.isfinite(x).all())
    _, d = edge_vectors(x, molecule.edge_index)
    assert float((d - d0).abs().mean()) < 0.5


def test_descent_step_never_increases_the_linearised_residual(molecule):
    pos = molecule.pos.double()
    graphs = Batch.from_data_list([molecule, molecule])
    both = torch.cat([pos, pos + 0.1 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)])
    lin = DistanceToCoordinates(both, graphs.edge_index, graphs.batch, 2, "transpose")
    r = torch.randn(graphs.edge_index.shape[1], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    after = r - lin.jvp(lin.descent_step(r))
    assert float(after.norm()) < float(r.norm())
    # the bare half-transpose overshoots: its linearised residual grows on this graph
    assert float((r - lin.jvp(0.5 * lin.vjp(r))).norm()) > float(r.norm())


# --- packaged data --------------------------------------------------------------------------------------


def test_packaged_splits_verify_and_are_disjoint_by_molecule():
    test = load_conformers("test")
    train = load_conformers("train")
    val = load_conformers("val")
    geom = load_conformers("train_geom")
    pubchem = load_conformers("train_pubchem")
    rings = load_conformers("train_rings")
    val_geom = load_conformers("val_geom")
    assert len(test) >= 200 and len(train) >= 300 and len(val) >= 30 and len(geom) >= 400 and len(pubchem) >= 100
    assert len(rings) >= 100 and len(val_geom) >= 90
    # every train_rings molecule has the small rings it was made for
    assert all(any(len(r) <= 4 for r in e.mol.GetRingInfo().AtomRings()) for e in rings)
    # compared without stereo: the PubChem table often leaves out stereo that the GEOM list gives
    splits = (train, val, test, geom, pubchem, rings, val_geom)
    canon = [{Chem.MolToSmiles(Chem.MolFromSmiles(e.smiles), isomericSmiles=False) for e in split} for split in splits]
    for i, j in itertools.combinations(range(len(splits)), 2):
        assert not canon[i] & canon[j], (i, j)
    e = test[0]
    assert e.n_conformers <= e.cap and e.coordinates().shape == (e.n_conformers, e.n_atoms, 3)
    assert e.rel_energy_kcal[0] == 0.0 and list(e.rel_energy_kcal) == sorted(e.rel_energy_kcal)
    assert all(x.method == "GFN2-xTB" for x in test + train + val + geom + pubchem + rings + val_geom)
    assert all(x.n_conformers <= x.cap for x in val_geom)  # capped at GEOM's count, as the test molecules
    assert all(x.n_conformers <= x.cap == 10 for x in geom + pubchem + rings)
    assert all(a.GetAtomicNum() != 1 or a.GetDegree() == 1 for a in e.mol.GetAtoms())  # explicit H kept
    assert len(load_conformers("test", limit=3, max_atoms=15)) == 3


def test_ring_neighbours_are_one_edit_qm9_like_small_ring_molecules_outside_the_excluded():
    script = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "make_conformer_dataset.py"))
    ring_neighbours, qm9_like = script["ring_neighbours"], script["qm9_like"]
    seeds = ["OC1CC1", "C[C@H]1CN1C=O"]
    found = ring_neighbours(seeds, exclude={"C1CC1N"})
    flat = [Chem.MolToSmiles(Chem.MolFromSmiles(s), isomericSmiles=False) for s in found]
    assert len(found) > 20 and len(set(flat)) == len(flat)  # one stereoisomer per constitution
    assert sorted(qm9_like(found, set())) == sorted(found)
    for smiles in found:
        mol = Chem.MolFromSmiles(smiles)
        assert any(len(ring) in (3, 4) for ring in mol.GetRingInfo().AtomRings()), smiles
        # every stereocentre is assigned, so every ETKDG seed embeds the same stereoisomer
        assert all(label != "?" for _, label in Chem.FindMolChiralCenters(mol, includeUnassigned=True)), smiles
    # an element change, an added atom, a raised bond order and a removed terminal atom of cyclopropanol
    assert {"OC1CO1", "CC1(O)CC1", "O=C1CC1", "C1CC1"} <= set(flat)
    assert "C1CC1N" not in flat and "OC1CC1" not in flat  # excluded; the seeds themselves are no edit away
    assert ring_neighbours(seeds, exclude={"C1CC1N"}) == found  # deterministic


def test_ring_system_keys_join_rings_that_share_atoms_and_drop_substituents():
    keys = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "conformer_breakdown.py"))["ring_system_keys"]
    assert keys("CCO") == set()
    assert keys("OC1CC1CC1CCO1") == {"C1CC1", "C1COC1"}  # two separate systems
    assert len(keys("C1CC12CC2")) == 1 and len(keys("C1CC2CC2C1")) == 1  # spiro and fused: one system each
    assert keys("C=C1CC1") == keys("CC1CC1") == {"C1CC1"}  # an exocyclic bond is a substituent
    assert keys("C1=CC1") != keys("C1CC1")  # ring bond orders count


def test_corrupted_package_and_bad_split_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="split"):
        load_conformers("validation")
    manifest = json.loads(json.dumps(conformer_data.conformer_manifest()))
    manifest["splits"]["test"]["sha256"] = "0" * 64
    monkeypatch.setattr(conformer_data, "conformer_manifest", lambda: manifest)
    with pytest.raises(RuntimeError, match="checksum"):
        load_conformers("test")


# --- training ---------------------------------------------------------------------------------------------


def test_distance_dsm_loss_is_rigid_motion_invariant_and_differentiable(molecule):
    process = DistanceVEProcess(sigma_max=5.0)
    model = EdgeScoreModel(**TINY_MODEL, process=process.spec).double()
    batch = Batch.from_data_list([molecule.clone(), molecule.clone()])
    batch.pos = batch.pos.double()
    q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]
    moved = batch.clone()
    moved.pos = batch.pos @ q.T + 1.0
    a = distance_dsm_loss(model, process, batch, generator=torch.Generator().manual_seed(4))
    a_value = float(a.detach())
    # isotropic noise: rotating the data rotates the noise's law, so compare with the rotated noise draw
    b = distance_dsm_loss(model, process, moved, generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(a) and a > 0
    a.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert abs(a_value - float(b.detach())) < 0.5 * a_value  # same law; different draws of the noise direction
    with pytest.raises(ValueError, match="pos"):
        distance_dsm_loss(model, process, molecule.clone().update({"pos": None}))


@pytest.mark.parametrize(
    ("weighting", "sigma_data", "learned"),
    [("sigma2", 1.0, False), ("edm", 0.7, False), ("edm", 2.0, False), ("none", 1.0, False), ("sigma2", 1.0, True)],
)
def test_distance_dsm_loss_weights_each_edge_by_lambda(molecule, weighting, sigma_data, learned):
    """The loss is mean_E lambda(t) (s_theta - nc3 score)^2 with lambda = s^2, s^2 (1 + s^2/sigma_data^2) or 1
    (with a learned u(t): mean_E lambda l e^-u + u), recomputed here from the times and distances the model saw."""
    process = DistanceVEProcess(sigma_max=5.0)
    net = EdgeScoreModel(**TINY_MODEL, process=process.spec).double()
    seen = {}

    def model(t, d, graph=None):
        seen.update(t=t, d=d)
        return net(t, d, graph=graph)

    batch = Batch.from_data_list([molecule.clone(), molecule.clone(), molecule.clone()])
    batch.pos = batch.pos.double()
    gen = torch.Generator().manual_seed(8)
    log_weight = NoiseLevelLogWeight(process.T, 5, dtype=torch.float64) if learned else None
    if learned:
        log_weight.values.data = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    with torch.no_grad():
        loss = distance_dsm_loss(
            model, process, batch, generator=gen, weighting=weighting, sigma_data=sigma_data, log_weight=log_weight
        )
        _, d0 = edge_vectors(batch.pos, batch.edge_index)
        edge_t = seen["t"][batch.batch[batch.edge_index[0]]]
        s = process.scale(edge_t)
        residual = net(seen["t"], seen["d"], graph=batch) - NoncentralChi3(d0, s).score(seen["d"])
    lam = {"sigma2": s**2, "edm": s**2 + s**4 / sigma_data**2, "none": torch.ones_like(s)}[weighting]
    terms = lam * residual**2
    if learned:  # u between the knots at t = 0, 0.25, ..., 1, by hand
        knot = (edge_t * 4).floor().clamp(max=3).long()
        w = edge_t * 4 - knot
        u = log_weight.values.data[knot] * (1 - w) + log_weight.values.data[knot + 1] * w
        terms = terms * torch.exp(-u) + u
    assert float(loss) == pytest.approx(float(terms.mean()), rel=1e-12)
    assert torch.allclose(distance_dsm_weight(s, weighting, sigma_data), lam, rtol=1e-12)


def test_distance_dsm_weightings_reject_bad_settings(molecule):
    process = DistanceVEProcess(sigma_max=5.0)
    model = EdgeScoreModel(**TINY_MODEL, process=process.spec)
    batch = molecule.clone()
    # edm at s = sigma_data doubles sigma2's weight; far below sigma_data it is sigma2's
    s = torch.tensor([1e-4, 0.5])
    assert torch.allclose(distance_dsm_weight(s, "edm", 0.5) / distance_dsm_weight(s, "sigma2"), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="weighting"):
        distance_dsm_loss(model, process, batch, weighting="likelihood")
    with pytest.raises(ValueError, match="sigma_data"):
        distance_dsm_loss(model, process, batch, weighting="edm", sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        distance_dsm_weight(s, "edm", float("nan"))
    for bad in ({"weighting": "likelihood"}, {"sigma_data": -1.0}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            GraphTrainingSpec(**bad)
    spec = ConformersQM9Experiment.Spec.model_validate({"training": {"weighting": "edm", "sigma_data": 0.5}})
    assert (spec.training.weighting, spec.training.sigma_data) == ("edm", 0.5)


def test_noise_level_log_weight_interpolates_its_knots():
    u = NoiseLevelLogWeight(2.0, 3)
    assert torch.equal(u(torch.tensor([0.0, 0.7, 2.0])), torch.zeros(3))  # starts at zero: the plain loss's optimum
    u.values.data = torch.tensor([1.0, 3.0, -1.0])
    assert torch.allclose(u(torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0])), torch.tensor([1.0, 2.0, 3.0, 1.0, -1.0]))
    for bad in (torch.tensor([-0.1]), torch.tensor([2.5])):
        with pytest.raises(ValueError, match="t: expected times"):
            u(bad)
    with pytest.raises(ValueError, match="knots"):
        NoiseLevelLogWeight(1.0, 1)


def test_learned_weighting_follows_the_loss_per_noise_level(tmp_path, molecule):
    """u(t) learns log E[lambda l | t], the log mean loss at each noise level (measured here at the knots with
    200 noise draws of the trained network); the trainer checkpoints u and resumes bit for bit."""
    process = DistanceVEProcess(sigma_max=5.0)
    confs = molecule.pos.unsqueeze(0) + 0.05 * torch.randn(3, molecule.num_nodes, 3, generator=torch.Generator().manual_seed(5))
    spec = {"steps": 200, "batch_size": 2, "lr": 3e-3, "ema_decay": 0.9, "checkpoint_every": 100, "log_every": 50}
    spec |= {"learned_weighting": True, "weighting_knots": 4, "weighting_lr_scale": 10.0, "warmup_steps": 10}

    def make(out, steps, **change):
        torch.manual_seed(0)
        model = EdgeScoreModel(**TINY_MODEL, process=process.spec)
        return GraphTrainer(model, process, [molecule] * 3, [confs] * 3, {**spec, "steps": steps, **change}, out)

    full = make(tmp_path / "full", 200)
    full.fit()
    u = full.log_weight.values.detach()
    assert [g["lr"] for g in full.optimizer.param_groups] == [3e-3, pytest.approx(3e-2)]  # scheduled, u's 10x
    batch = Batch.from_data_list([molecule.clone().update({"pos": c}) for c in confs])
    gen = torch.Generator().manual_seed(1)

    def mean_loss(t: float) -> Tensor:
        noises = (torch.randn(batch.pos.shape, generator=gen) for _ in range(200))
        times = torch.full((3,), t)
        return torch.stack([_distance_dsm(full.model, process, batch, times, z, "sigma2", 1.0) for z in noises]).mean()

    with torch.no_grad():
        measured = torch.stack([mean_loss(t) for t in (0.001, 1 / 3, 2 / 3, 1.0)]).log()
    assert float((u - measured).abs().max()) < 0.35 and float(measured.max() - measured.min()) > 1.0  # levels differ
    part = make(tmp_path / "part", 100)
    part.fit()
    resumed = make(tmp_path / "part", 200)
    resumed.fit()
    assert resumed.losses == full.losses and torch.equal(resumed.log_weight.values, full.log_weight.values)
    with pytest.raises(ValueError, match="learned_weighting"):
        make(tmp_path / "part", 300, learned_weighting=False).fit()


def test_learned_weighting_is_refused_under_ddp(monkeypatch, molecule):
    """u(t) is outside the DDP module, so its gradient would not be averaged: refused before training."""
    import geodiffusion.training.trainer as trainer_module
    from geodiffusion.training.distributed import DistributedContext

    context = DistributedContext(rank=0, world_size=2, local_rank=0, backend="gloo")
    monkeypatch.setattr(trainer_module, "setup_distributed", lambda device, distributed=None: context)
    monkeypatch.setattr(trainer_module, "local_device", lambda device: device)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, device_ids=None: module)
    process = DistanceVEProcess(sigma_max=5.0)
    spec = {"steps": 1, "batch_size": 2, "learned_weighting": True}
    with pytest.raises(ValueError, match="learned_weighting: not supported under distributed"):
        GraphTrainer(EdgeScoreModel(**TINY_MODEL), process, [molecule] * 2, [molecule.pos.unsqueeze(0)] * 2, spec)


def test_graph_trainer_resumes_bit_for_bit(tmp_path, molecule):
    process = DistanceVEProcess(sigma_max=5.0)
    confs = molecule.pos.unsqueeze(0) + 0.05 * torch.randn(3, molecule.num_nodes, 3, generator=torch.Generator().manual_seed(5))
    spec = {"steps": 6, "batch_size": 2, "lr": 1e-2, "ema_decay": 0.9, "checkpoint_every": 3, "log_every": 1}

    def make(out, steps):
        torch.manual_seed(0)
        model = EdgeScoreModel(**TINY_MODEL, process=process.spec)
        return GraphTrainer(model, process, [molecule] * 3, [confs] * 3, {**spec, "steps": steps}, out)

    full = make(tmp_path / "full", 6)
    full.fit()
    part = make(tmp_path / "part", 3)
    part.fit()
    resumed = make(tmp_path / "part", 6)
    resumed.fit()
    assert resumed.losses == full.losses
    for p, q in zip(full.ema_model.parameters(), resumed.ema_model.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="batch_size"):
        GraphTrainer(EdgeScoreModel(**TINY_MODEL), process, [molecule], [confs], {**spec, "batch_size": 2})


def test_distance_dsm_validation_is_a_fixed_noise_per_edge_mean(molecule):
    process = DistanceVEProcess(sigma_max=5.0)
    torch.manual_seed(0)
    model = EdgeScoreModel(**TINY_MODEL, process=process.spec)
    confs = molecule.pos.unsqueeze(0) + 0.05 * torch.randn(3, molecule.num_nodes, 3, generator=torch.Generator().manual_seed(5))
    small = point_cloud_graph(bonds=torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]]), num_nodes=5)
    small_confs = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(6))
    graphs, conformers = [molecule, small], [confs, small_confs]
    validation = DistanceDSMValidation(process, graphs, conformers, draws=3, seed=11, chunk=2)
    value = validation(model)
    assert value == validation(model) and value != DistanceDSMValidation(process, graphs, conformers, draws=3, seed=12)(model)
    whole = DistanceDSMValidation(process, graphs, conformers, draws=3, seed=11, chunk=64)
    assert value == pytest.approx(whole(model), rel=1e-5)  # one batch or three: the same draws
    # a value of the loss: its mean over many draws is distance_dsm_loss's expectation on the five pairs
    items = Batch.from_data_list([g.clone().update({"pos": p}) for g, c in zip(graphs, conformers, strict=True) for p in c])
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        direct = torch.tensor([float(distance_dsm_loss(model, process, items, generator=gen)) for _ in range(400)])
    many = DistanceDSMValidation(process, graphs, conformers, draws=400, seed=11, chunk=64)(model)
    assert abs(many - float(direct.mean())) < 4 * float(direct.std()) * (2 / 400) ** 0.5
    with pytest.raises(ValueError, match="conformers\\[1\\]"):
        DistanceDSMValidation(process, graphs, [confs, small_confs[:, :4]])
    with pytest.raises(ValueError, match="draws"):
        DistanceDSMValidation(process, graphs, conformers, draws=0)


# --- skeletons and chirality --------------------------------------------------------------------------------


def test_skeleton_poses_keep_bone_lengths_and_are_bimodal():
    data = SkeletonPoses()
    x = data.sample(400, torch.Generator().manual_seed(0))
    bones = data.bones()
    assert x.shape == (400, 16, 3)
    assert torch.allclose((x[:, bones[0]] - x[:, bones[1]]).norm(dim=-1), data.bone_lengths().expand(400, -1), atol=1e-12)
    assert torch.allclose(x.mean(1), torch.zeros(400, 3, dtype=torch.float64), atol=1e-12)
    knee = (x[:, 12] - x[:, 11]).mul(x[:, 11] - x[:, 10]).sum(-1) / 1.3**2  # cosine of the knee angle
    bent = (knee < 0.5).double().mean()
    assert 0.4 < float(bent) < 0.6  # p_bent = 0.5: the bent (90 degree) and straight modes are both there
    g = point_cloud_graph(bonds=bones, num_nodes=data.n_joints)
    assert int(torch.bincount(g.edge_index.flatten()).min()) >= 4


def test_match_chirality_reflects_mirrored_samples():
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)[C@@H](O)CC"))
    AllChem.EmbedMultipleConfs(mol, 3, randomSeed=0)
    x = torch.stack([torch.from_numpy(c.GetPositions()) for c in mol.GetConformers()])
    from geodiffusion.experiments.conformers import _stereo_centres

    centres = _stereo_centres(mol)
    assert centres.shape == (2, 4)
    mixed = torch.stack([x[0], -x[1], x[2]])
    fixed = match_chirality(mixed, x[0], centres)
    assert torch.equal(chirality_signs(fixed, centres), chirality_signs(x, centres))
    assert torch.equal(fixed[1], x[1]) and torch.equal(fixed[0], x[0])
    # the chiral tags alone give the same signs, so no reference conformer is needed
    assert torch.equal(match_stereo(mixed, mol), fixed)


@pytest.mark.parametrize(
    "smiles", ["C[C@H](N)[C@@H](O)CC", "C[C@@H](N)[C@H](O)CC", "C[S@](=O)CC", "C[S@@](=O)CC", "C[N@]1CC1C", "C[P@@](CC)c1ccccc1"]
)
def test_stereo_signs_follow_rdkit_chiral_tags_with_four_or_three_neighbours(smiles):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMultipleConfs(mol, 4, randomSeed=1)  # ETKDG honours the tags
    x = torch.stack([torch.from_numpy(c.GetPositions()) for c in mol.GetConformers()])
    centres, signs = stereo_signs(mol)
    assert centres.shape[0] >= 1 and x.shape[0] == 4
    assert torch.equal(chirality_signs(x, centres), signs.expand(4, -1))
    assert torch.equal(chirality_signs(-x, centres), -signs.expand(4, -1))


def test_redraw_diastereomers_replaces_only_wrong_samples_until_right_or_out_of_rounds():
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)[C@@H](O)CC"))
    other = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)[C@H](O)CC"))  # a diastereomer, same atom order
    AllChem.EmbedMultipleConfs(mol, 4, randomSeed=0)
    AllChem.EmbedMultipleConfs(other, 4, randomSeed=0)
    right, wrong = (torch.stack([torch.from_numpy(c.GetPositions()) for c in m.GetConformers()]) for m in (mol, other))

    class Scripted:  # a stand-in sampler: each call returns the next scripted batch of conformers
        def __init__(self, batches):
            self.batches, self.shapes = list(batches), []

        def sample(self, score, process, shape, **kw):
            self.shapes.append(shape)
            return self.batches.pop(0).reshape(-1, 3)

    graph = mol_to_graph(mol, conformer=None)
    first = torch.stack([right[0], wrong[1], -right[2], wrong[3]])  # -right[2]: a mirror image, mended by matching
    start = match_stereo(first, mol)
    sampler = Scripted([torch.stack([wrong[0], right[1]]), right[3][None]])
    args = (None, None, [graph], [mol])
    out, seconds = conformer_experiments.redraw_diastereomers(sampler, *args, [start], 1, 100, None, torch.float64)
    assert sampler.shapes == [(2 * graph.num_nodes, 3)] and seconds >= 0  # only the two diastereomers are redrawn
    assert stereo_correct(out[0], mol).tolist() == [True, False, True, True]
    assert (
        torch.equal(out[0][[0, 2]], start[[0, 2]])
        and torch.equal(out[0][3], right[1])
        and torch.equal(start, match_stereo(first, mol))
    )
    out, _ = conformer_experiments.redraw_diastereomers(sampler, *args, out, 3, 100, None, torch.float64)
    assert stereo_correct(out[0], mol).all() and torch.equal(out[0][1], right[3]) and sampler.batches == []
    same, seconds = conformer_experiments.redraw_diastereomers(sampler, *args, [start], 0, 100, None, torch.float64)
    assert same[0] is start and seconds == 0.0
    with pytest.raises(ValueError, match="rounds"):
        conformer_experiments.redraw_diastereomers(sampler, *args, [start], -1, 100, None, torch.float64)
    with pytest.raises(ValueError, match="redraws needs match"):
        conformer_experiments.sample_conformers(sampler, *args, [4], 100, None, torch.float64, match=False, redraws=1)


def test_mmff_relax_lowers_the_energy_of_noisy_conformers_and_keeps_minima():
    from rdkit.Chem import rdForceFieldHelpers

    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@H](O)C(=O)NC1CC1"))
    AllChem.EmbedMultipleConfs(mol, 3, randomSeed=0)
    AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
    minima = torch.stack([torch.from_numpy(c.GetPositions()) for c in mol.GetConformers()])
    noisy = minima + 0.1 * torch.randn(minima.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)

    def energy(xyz):
        m = Chem.Mol(mol)
        m.GetConformer(0).SetPositions(xyz.numpy())
        return rdForceFieldHelpers.MMFFGetMoleculeForceField(m, props, confId=0).CalcEnergy()

    relaxed, converged = conformer_experiments.mmff_relax(mol, noisy, max_iters=2000)
    assert relaxed.shape == noisy.shape and converged.all()
    for x, y in zip(noisy, relaxed, strict=True):
        assert energy(y) < energy(x) - 10.0  # 0.1 A of noise costs tens of kcal/mol of bond stretch
    again, _ = conformer_experiments.mmff_relax(mol, minima, max_iters=2000)
    assert (again - minima).norm(dim=-1).max() < 1e-2
    assert mol.GetNumConformers() == 3  # the input molecule is left alone
    for bad, match in ((noisy[:, :-1], "expected \\[S, 20, 3\\]"), (noisy * float("nan"), "finite"), (noisy, "max_iters")):
        with pytest.raises(ValueError, match=match):
            conformer_experiments.mmff_relax(mol, bad, max_iters=0 if match == "max_iters" else 10)


def test_every_packaged_test_reference_has_its_molecules_tagged_stereo():
    # why conformers-qm9 may match stereo to the tags instead of the first reference: on the test split they agree
    tagged = 0
    for e in load_conformers("test"):
        centres, signs = stereo_signs(e.mol)
        if centres.numel():
            tagged += 1
            assert torch.equal(chirality_signs(e.coordinates(torch.float64), centres), signs.expand(e.n_conformers, -1))
    assert tagged == 181
    # ... so none of them is a wrong-stereo sample, and every mirror image of them is
    some = load_conformers("test", limit=30)
    refs = [e.coordinates(torch.float64) for e in some]
    assert conformer_experiments.wrong_stereo_fraction(some, refs) == 0.0
    assert conformer_experiments.wrong_stereo_fraction(some, [-x for x in refs]) == 1.0


def test_stereo_correct_flags_diastereomers_that_reflection_cannot_mend():
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)[C@@H](O)CC"))
    other = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)[C@H](O)CC"))  # one centre inverted, same atom order
    AllChem.EmbedMultipleConfs(mol, 3, randomSeed=0)
    AllChem.EmbedMultipleConfs(other, 3, randomSeed=0)
    own, dia = (torch.stack([torch.from_numpy(c.GetPositions()) for c in m.GetConformers()]) for m in (mol, other))
    assert stereo_correct(own, mol).all() and not stereo_correct(-own, mol).any()
    assert not stereo_correct(match_stereo(dia, mol), mol).any()  # half the centres agree either way
    flat = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    assert stereo_correct(torch.zeros(2, flat.GetNumAtoms(), 3), flat).tolist() == [True, True]


# --- experiments end to end ----------------------------------------------------------------------------------


def test_conformers_qm9_quick_run_writes_metrics_baseline_and_plot(tmp_path, monkeypatch, capsys):
    assert "conformers-qm9" in gd.registry(gd.Experiment) and "skeletons" in gd.registry(gd.Experiment)
    spec = ConformersQM9Experiment.resolve_spec(
        {
            "train_splits": ["train_geom", "train"],
            "n_train": 24,
            "n_test": 4,
            "n_val": 3,
            "val_split": "val_geom",
            "select": "best_val",
            "max_atoms": 18,
            "model": TINY_MODEL,
            "training": {"steps": 20, "batch_size": 8, "checkpoint_every": 10, "log_every": 5},
            "sampler": {"steps": 20},
        },
        quick=True,
    )
    real_etkdg = conformer_experiments.etkdg_conformers

    def failing_on_the_first_molecule(test, counts, seed=0):
        out, seconds = real_etkdg(test, counts, seed)
        return [out[0][:0]] + out[1:], seconds

    monkeypatch.setattr(conformer_experiments, "etkdg_conformers", failing_on_the_first_molecule)
    loaded, real_load = [], conformer_experiments.load_conformers
    monkeypatch.setattr(
        conformer_experiments, "load_conformers", lambda split, **kw: loaded.append(split) or real_load(split, **kw)
    )
    selected, sampled, real_best = [], [], GraphTrainer.best_model

    def best_model(self):
        selected.append(self.best_validation)
        sampled.append(real_best(self))
        return sampled[-1]

    monkeypatch.setattr(GraphTrainer, "best_model", best_model)
    metrics = ConformersQM9Experiment(spec).execute(tmp_path, progress=False)
    written = json.loads((tmp_path / "metrics.json").read_text())
    # the molecule ETKDG could not embed covers nothing and stays out of the matching distance
    assert metrics["etkdg_failed_molecules"] == 1 and metrics["etkdg_cov_r_mean"] <= 75
    assert written == metrics
    assert metrics["references_are_xtb_refined_not_geom"] == 1.0
    assert metrics["n_test_molecules"] == 4 and metrics["sampler_steps"] == 20
    for prefix in ("model_", "etkdg_"):
        assert 0 <= metrics[f"{prefix}cov_r_mean"] <= 100 and metrics[f"{prefix}mat_r_mean"] >= 0
    # ETKDG conformers of small test molecules lie close to their xTB-refined references
    assert metrics["etkdg_mat_r_mean"] < 0.6
    assert metrics["model_conformers_per_second"] > 0 and metrics["speed_ratio_model_over_etkdg"] > 0
    assert math.isfinite(metrics["final_loss"]) and math.isfinite(metrics["final_loss_median"])
    assert 0 <= metrics["model_diverged_molecules"] <= metrics["n_test_molecules"]
    assert 0 <= metrics["model_wrong_stereo_fraction"] <= 1 or math.isnan(metrics["model_wrong_stereo_fraction"])
    assert (tmp_path / "conformers.png").stat().st_size > 0 and (tmp_path / "model" / "checkpoints" / "last.pt").is_file()
    assert "not GEOM" in (tmp_path / "REFERENCES.txt").read_text()
    # the default trains the learned weighting u(t) with the network, and checkpoints it; the network updates its edges
    assert json.loads((tmp_path / "spec.json").read_text())["training"]["learned_weighting"] is True
    assert json.loads((tmp_path / "spec.json").read_text())["model"]["edge_update"] is True
    assert ConformersQM9Experiment.resolve_spec({"model": {"edge_update": False}}).model.edge_update is False
    assert SkeletonsExperiment.resolve_spec(None).model.edge_update is False  # not measured there
    assert torch.load(tmp_path / "model" / "checkpoints" / "last.pt", weights_only=True)["log_weight"] is not None
    # held-out molecules scored at the checkpoints (10, 20); the best step's EMA weights sampled the test set
    assert loaded == ["train_geom", "test", "val_geom"]  # n_train = 24: train_geom alone fills it
    assert metrics["n_val_molecules"] == 3 and metrics["val_best_step"] in (10, 20)
    assert metrics["sampled_step"] == metrics["val_best_step"] and metrics["val_loss_best"] <= metrics["val_loss_final"]
    assert selected == [(metrics["val_best_step"], metrics["val_loss_best"])]  # select="best_val" sampled with them
    # the blow-up tracer reloads the sampled network from the run folder and samples with its sampler
    scripts = Path(__file__).parents[1] / "scripts"
    tracer = runpy.run_path(str(scripts / "conformer_blowups.py"))
    counts = tracer["main"](["--run", str(tmp_path), "--molecules", "0", "1", "--copies", "2"])
    assert counts["samples"] == 4 and 0 <= counts["blown"] <= 4
    # load_run_model gives back the very weights the test set was sampled with
    model, run_spec = conformer_experiments.load_run_model(tmp_path)
    assert run_spec["select"] == "best_val" and not model.training
    for p, q in zip(model.state_dict().values(), sampled[0].state_dict().values(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="spec.json"):
        conformer_experiments.load_run_model(tmp_path / "model")
    # generate_conformers redraws the run's own test samples (stereo-matched, diastereomers redrawn 8 times by default)
    assert json.loads((tmp_path / "spec.json").read_text())["stereo_redraws"] == 8
    test = load_conformers("test", limit=4, max_atoms=18)
    counts = [2 * e.n_conformers for e in test]
    mols = generate_conformers(tmp_path, [e.mol for e in test], counts, seed=derive_seed(spec.seed, "sample"))
    own = torch.load(tmp_path / "samples.pt", weights_only=True)["model"]
    for m, e, x, c in zip(mols, test, own, counts, strict=True):
        assert m.GetNumConformers() == c and Chem.MolToSmiles(m) == Chem.MolToSmiles(e.mol)
        assert torch.equal(torch.stack([torch.from_numpy(q.GetPositions()) for q in m.GetConformers()]), x)
    # SMILES get hydrogens; the tagged stereo holds in every conformer; the input molecule keeps its conformers
    (chiral,) = generate_conformers(tmp_path, ["C[C@H](O)[C@@H](N)C#N"], 3, seed=1)
    centres, signs = stereo_signs(chiral)
    xyz = torch.stack([torch.from_numpy(q.GetPositions()) for q in chiral.GetConformers()])
    assert chiral.GetNumAtoms() == 15 and xyz.shape == (3, 15, 3) and torch.isfinite(xyz).all()
    assert (chirality_signs(xyz, centres) == signs).double().mean(-1).ge(0.5).all()
    flags = [q.GetBoolProp("stereo_correct") for q in chiral.GetConformers()]
    assert flags == stereo_correct(xyz, chiral).tolist()
    assert test[0].mol.GetNumConformers() == test[0].n_conformers
    # relax=True is mmff_relax of the same samples
    (relaxed,) = generate_conformers(tmp_path, ["C[C@H](O)[C@@H](N)C#N"], 3, seed=1, relax=True)
    expected, _ = conformer_experiments.mmff_relax(chiral, xyz)
    assert torch.equal(torch.stack([torch.from_numpy(q.GetPositions()) for q in relaxed.GetConformers()]), expected)
    for bad, match in (
        ((["C1CC"], 2), "cannot parse"),
        ((["CC"], 0), "positive integer"),
        ((["CC", "CO"], [1]), "one count per molecule"),
        (([Chem.MolFromSmiles("CCO")], 2), "implicit hydrogens"),
        (([Chem.AddHs(Chem.MolFromSmiles("C.C"))], 2), "fragments"),
    ):
        with pytest.raises(ValueError, match=match):
            generate_conformers(tmp_path, *bad)
    with pytest.raises(TypeError, match="SMILES"):
        generate_conformers(tmp_path, [42], 1)
    with pytest.raises(ValueError, match="stereo_redraws"):
        generate_conformers(tmp_path, ["CC"], 1, stereo_redraws=-1)
    # MMFF relaxation of the run's own samples and of ETKDG's: the raw rows repeat the run's metrics
    capsys.readouterr()
    runpy.run_path(str(scripts / "relaxed_coverage.py"))["main"](["--run", str(tmp_path)])
    rows = {line[:24].strip(): [float(v) for v in line[24:].split()] for line in capsys.readouterr().out.splitlines()[2:7]}
    assert list(rows) == ["model", "model + MMFF", "model, stereo-correct", "ETKDG", "ETKDG + MMFF"]
    assert rows["model"] == pytest.approx([metrics[f"model_{k}_mean"] for k in ("cov_r", "mat_r", "cov_p", "mat_p")], abs=1e-3)
    assert rows["ETKDG"][:2] == pytest.approx([metrics["etkdg_cov_r_mean"], metrics["etkdg_mat_r_mean"]], abs=1e-3)
    assert all(0 <= r[0] <= 100 and r[1] >= 0 for r in rows.values())
    # the command line writes the same conformers to an SD file, one record per conformer
    capsys.readouterr()
    sdf = tmp_path / "generated.sdf"
    smiles = ["C[C@H](O)[C@@H](N)C#N", "CCO"]
    assert cli_main(["conformers", str(tmp_path), *smiles, "-n", "3", "--seed", "1", "--out", str(sdf)]) == 0
    records = list(Chem.SDMolSupplier(str(sdf), removeHs=False))
    assert [r.GetProp("_Name") for r in records] == [smiles[0]] * 3 + [smiles[1]] * 3
    assert [r.GetIntProp("conformer") for r in records] == [0, 1, 2] * 2
    assert all(r.GetIntProp("stereo_correct") == 1 for r in records[3:])  # ethanol has no stereo to get wrong
    for k, m in enumerate(generate_conformers(tmp_path, smiles, 3, seed=1)):
        expected = torch.stack([torch.from_numpy(q.GetPositions()) for q in m.GetConformers()])
        written = torch.stack([torch.from_numpy(r.GetConformer().GetPositions()) for r in records[3 * k : 3 * k + 3]])
        assert torch.allclose(written, expected, atol=1e-4)  # the SD file keeps 4 decimals
    assert "wrote 6 conformers of 2 molecules" in capsys.readouterr().out
    for argv, message in (
        (["C1CC", "-n", "2"], "cannot parse"),
        (["CC", "-n", "0"], "positive number"),
    ):
        assert cli_main(["conformers", str(tmp_path), *argv, "--out", str(tmp_path / "x.sdf")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "x.sdf").exists()
    assert cli_main(["conformers", str(tmp_path / "model"), "CC", "--out", str(tmp_path / "x.sdf")]) == 2
    assert "spec.json" in capsys.readouterr().err
    # the diagnostics that reload a run: per-noise DSM loss, and the network mixed with the perfect score
    capsys.readouterr()
    runpy.run_path(str(scripts / "dsm_by_noise.py"))["main"](
        ["--run", str(tmp_path), "--molecules", "2", "--times", "0.1", "0.9", "--splits", "val", "test", "--oracle"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[-6].split()[0] == "sigma"
    assert [r.split()[0] for r in lines[-5:]] == ["val", "test", "test/val", "oracle", "test-orac"]
    test_loss, oracle_loss, excess = ([float(v) for v in lines[i].split()[1:]] for i in (-4, -2, -1))
    assert all(v > 0 for v in test_loss) and all(v >= 0 for v in oracle_loss)
    assert excess == pytest.approx([v - x for v, x in zip(test_loss, oracle_loss, strict=True)], abs=2e-4)
    runpy.run_path(str(scripts / "oracle_coverage.py"))["main"](
        ["--run", str(tmp_path), "--molecules", "2", "--oracle-above", "2", "0.5", "--sampler", '{"steps": 10}']
    )
    rows = [r.split() for r in capsys.readouterr().out.splitlines()[-2:]]
    assert [r[1] for r in rows] == ["2.00", "0.50"] and all(0 <= float(r[3]) <= 100 for r in rows)
    # a network averaged with itself is that network: (a + a) / 2 == a exactly, so the same samples and metrics
    runpy.run_path(str(scripts / "oracle_coverage.py"))["main"](
        ["--run", str(tmp_path), "--ensemble", str(tmp_path), "--molecules", "2", "--oracle-above", "2", "0.5",
         "--sampler", '{"steps": 10}']
    )  # fmt: skip
    averaged = [r.split() for r in capsys.readouterr().out.splitlines()[-2:]]
    assert [r[:-1] for r in averaged] == [r[:-1] for r in rows]  # all but the rate
    with pytest.raises(SystemExit):
        runpy.run_path(str(scripts / "oracle_coverage.py"))["main"](["--ensemble", str(tmp_path), "--molecules", "1"])
    assert "--ensemble: needs --run" in capsys.readouterr().err
    other = tmp_path / "other_graph"  # the same network on another graph: its scores are not averageable
    (other / "model" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "model" / "checkpoints" / "last.pt", other / "model" / "checkpoints" / "last.pt")
    (other / "spec.json").write_text(json.dumps({**json.loads((tmp_path / "spec.json").read_text()), "max_hops": 4}))
    with pytest.raises(SystemExit):
        runpy.run_path(str(scripts / "oracle_coverage.py"))["main"](["--run", str(tmp_path), "--ensemble", str(other)])
    assert "has max_hops 4, --run has 3" in capsys.readouterr().err
    with pytest.raises(ValidationError, match="max_hops"):
        ConformersQM9Experiment.resolve_spec({"max_hops": 2}, quick=True)
    with pytest.raises(ValidationError, match="n_val"):
        ConformersQM9Experiment.resolve_spec({"n_val": 0, "select": "best_val"}, quick=True)
    with pytest.raises(ValidationError, match="train_splits: each split at most once"):
        ConformersQM9Experiment.resolve_spec({"train_splits": ["train", "train"]}, quick=True)
    with pytest.raises(ValidationError, match="train_splits"):
        ConformersQM9Experiment.resolve_spec({"train_splits": ["test"]}, quick=True)
    with pytest.raises(ValidationError, match="val_split"):
        ConformersQM9Experiment.resolve_spec({"val_split": "test"}, quick=True)
    with pytest.raises(ValidationError, match="stereo_redraws needs match_chirality"):
        ConformersQM9Experiment.resolve_spec({"match_chirality": False}, quick=True)  # the default redraws
    assert ConformersQM9Experiment.resolve_spec({"match_chirality": False, "stereo_redraws": 0}).stereo_redraws == 0


def test_diverged_molecules_flags_finite_samples_far_beyond_the_references():
    e = load_conformers("test", limit=1)[0]
    ref = e.coordinates(torch.float32)
    centre = ref.mean(-2, keepdim=True)
    far, near, nan = ref.clone(), ref.clone(), ref.clone()
    far[0] = centre[0] + 12 * (ref[0] - centre[0])  # 12 times the spread: blown up
    near[0] = centre[0] + 5 * (ref[0] - centre[0])  # wrong but not blown up
    nan[0, 0, 0] = float("nan")  # non-finite samples are counted apart (score_ensembles)
    assert conformer_experiments.diverged_molecules([e] * 4, [ref, far, near, nan]) == [False, True, False, False]
    assert conformer_experiments.diverged_molecules([e], [near], factor=4.0) == [True]
    with pytest.raises(ValueError, match="factor"):
        conformer_experiments.diverged_molecules([e], [near], factor=0.5)


def test_dsm_by_noise_oracle_loss_vanishes_for_one_conformer_and_not_for_an_ensemble():
    split_loss = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "dsm_by_noise.py"))["split_loss"]
    process = DistanceVEProcess(sigma_max=5.0)
    ensembles = load_conformers("test", limit=3)
    assert [e.n_conformers for e in ensembles] == [13, 1, 1]

    def loss(group):
        return split_loss(EnsembleScore(process), process, group, 3, [0.2, 0.8], 2, torch.float64, references=True)

    # one conformer: the mixture score is the DSM target itself, at every noise level
    assert max(loss(ensembles[1:])) < 1e-20
    # 13 conformers: at 0.035 A the noisy distances name the conformer; at 1.4 A the posterior spreads over them
    small, large = loss(ensembles[:1])
    assert small < 1e-12 and large > 1e-3


def test_skeletons_quick_run_learns_bone_lengths(tmp_path):
    spec = SkeletonsExperiment.resolve_spec(
        {"n_train": 256, "n_reference": 8, "training": {"steps": 120, "batch_size": 16}, "sampler": {"steps": 30}}, quick=True
    )
    metrics = SkeletonsExperiment(spec).execute(tmp_path, progress=False)
    assert metrics["bone_length_error"] < 0.25 * metrics["bone_length_error_init"]
    assert metrics["bone_length_error_data"] < 1e-12
    assert math.isfinite(metrics["final_loss_median"])
    assert 0 <= metrics["cov_r"] <= 1 and metrics["data_cov_r"] >= metrics["cov_r"] - 0.5
    assert (tmp_path / "skeletons.png").stat().st_size > 0
