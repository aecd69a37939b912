"""The shared training loop (TrainerBase) under FunctionTrainer and GraphTrainer: 2-rank gloo DDP equals a single
process with the same global batch (functions sliced along the function axis, graphs as whole graphs with the loss
averaged over all the batch's edges), DDP checkpoints resume alone, and a fit interrupted between checkpoints
resumes bit-for-bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_distributed import DDP_GROUP, ROUND_OFF, WORLD, run_workers, torchrun_env, trainer_state

import geodiffusion as gd
from geodiffusion.conformers import point_cloud_graph
from geodiffusion.data.functions import sample_functions
from geodiffusion.models import BiDimensionalAttention
from geodiffusion.models.edge import EdgeScoreModel
from geodiffusion.processes.distance import DistanceVEProcess
from geodiffusion.training import (
    FunctionTrainer,
    GraphTrainer,
    Trainer,
    TrainerBase,
    TrainingSpec,
    load_checkpoint,
    load_ema_model,
)
from geodiffusion.training import functions as functions_module
from geodiffusion.training import graph as graph_module
from geodiffusion.training.distributed import batch_bounds

STEPS = 4
# 5 functions / 3 graphs over 2 ranks: uneven slices (3 + 2, 2 + 1) exercise the padded all-gather
FUNCTION_SPEC = {"batch_size": 5, "lr": 1e-2, "ema_decay": 0.9, "checkpoint_every": 2, "log_every": 2, "min_points": 4, "seed": 2}
GRAPH_SPEC = {"batch_size": 3, "lr": 1e-2, "ema_decay": 0.9, "checkpoint_every": 2, "log_every": 2, "seed": 2}


def function_trainer(steps: int, out: Path | None, seed: int = 0, distributed: bool | None = None, **changes) -> FunctionTrainer:
    process = gd.build({"kind": "ou_gp", "kernel": {"kind": "squared_exponential", "lengthscale": 0.7}})
    x, y = sample_functions("se", 12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.manual_seed(seed)
    model = BiDimensionalAttention(hidden=8, heads=2, layers=1).double()
    return FunctionTrainer(model, process, x, y, {**FUNCTION_SPEC, "steps": steps, **changes}, out, distributed=distributed)


def graphs() -> tuple[list, list[torch.Tensor]]:
    """Chains of 4 to 7 atoms (extended graphs of different edge counts), two conformers each."""
    gen = torch.Generator().manual_seed(1)
    out, confs = [], []
    for n in (4, 5, 6, 7):
        bonds = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
        out.append(point_cloud_graph(bonds=bonds, num_nodes=n))
        base = torch.cumsum(torch.randn(n, 3, generator=gen, dtype=torch.float64), 0)
        confs.append(base + 0.1 * torch.randn(2, n, 3, generator=gen, dtype=torch.float64))
    return out, confs


def graph_trainer(steps: int, out: Path | None, seed: int = 0, distributed: bool | None = None, **changes) -> GraphTrainer:
    process = DistanceVEProcess(sigma_max=3.0)
    torch.manual_seed(seed)
    model = EdgeScoreModel(hidden=8, layers=1, rbf=4, process=process.spec).double()
    return GraphTrainer(model, process, *graphs(), {**GRAPH_SPEC, "steps": steps, **changes}, out, distributed=distributed)


MAKERS = {"functions": function_trainer, "graphs": graph_trainer}
# Parameters whose gradient is zero in exact arithmetic are moved by round-off alone, which Adam divides by
# sqrt(v) + eps (~1e-8): every attention's key bias (softmax is shift invariant), and the query and key projections of
# the attention across input dimensions when there is one input dimension (softmax over a single key is 1). The two
# runs' summation orders then move them by up to ~1e-9 lr per step. Measured after 4 steps: up to 3.2e-12 there on
# one CPU (2.7e-13 on another), <= 1.1e-16 on every other parameter (value projections included), EMA and Adam moment.
ZERO_GRADIENT_ROUND_OFF = 1e-10


def _split_zero_gradient_rows(key: str, difference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows held to ROUND_OFF, rows held to ZERO_GRADIENT_ROUND_OFF) of one parameter's |a - b|."""
    if not key.endswith(("in_proj_weight", "in_proj_bias")):
        return difference.flatten(), difference.new_zeros(0)
    query, key_rows, value = difference.chunk(3, 0)  # nn.MultiheadAttention stacks q, k, v
    if "across_dims" in key:
        return value.flatten(), torch.cat([query.flatten(), key_rows.flatten()])
    if key.endswith("in_proj_weight"):
        return difference.flatten(), difference.new_zeros(0)
    return torch.cat([query.flatten(), value.flatten()]), key_rows.flatten()


def assert_equal_to_round_off(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 10
    strict, loose = {}, {}
    for k in a:
        strict[k], loose[k] = (
            float(part.max()) if part.numel() else 0.0 for part in _split_zero_gradient_rows(k, (a[k] - b[k]).abs())
        )
    assert max(strict.values()) < ROUND_OFF, max(strict.items(), key=lambda item: item[1])
    assert max(loose.values()) < ZERO_GRADIENT_ROUND_OFF, loose


def _worker(rank: int, port: int, root: str) -> None:
    torchrun_env(rank, port)
    torch.set_num_threads(1)
    root_path = Path(root)
    try:
        for name, make in MAKERS.items():
            # a different initialisation on each rank: DDP starts every rank from rank 0's parameters
            trainer = make(STEPS, root_path / name / "ddp", seed=rank)
            assert trainer.dist is not None and trainer.dist.world_size == WORLD
            sizes: list[int] = []
            trainer.model.register_forward_hook(lambda module, args, out, sizes=sizes: sizes.append(int(args[0].shape[0])))
            trainer.fit()
            torch.save({"history": trainer.history, "sizes": sizes}, root_path / name / f"rank{rank}.pt")
            # stopped at step STEPS // 2: the parent resumes it in a single process
            make(STEPS // 2, root_path / name / "ddp_half", seed=0 if rank == 0 else 10 + rank).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("loop")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before conftest's one_thread: one thread, as in the workers
    try:
        for name, make in MAKERS.items():
            (root / name).mkdir()
            make(STEPS, root / name / "single").fit()
        run_workers(root, _worker)
    finally:
        torch.set_num_threads(threads)
    return root


@DDP_GROUP
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_ddp_step_equals_the_single_process_step_and_its_checkpoint_resumes_alone(ddp_runs, name):
    root = ddp_runs / name
    single = trainer_state(root / "single" / "checkpoints" / "last.pt")
    assert_equal_to_round_off(trainer_state(root / "ddp" / "checkpoints" / "last.pt"), single)
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    reference = load_checkpoint(root / "single" / "checkpoints" / "last.pt")["history"]
    assert ranks[0]["history"] == ranks[1]["history"]  # the global-batch loss on every rank
    assert max(abs(a - b) for a, b in zip(ranks[0]["history"], reference, strict=True)) < ROUND_OFF
    # each rank ran the model on its slice of the global batch (functions, or whole graphs) only
    batch = (FUNCTION_SPEC if name == "functions" else GRAPH_SPEC)["batch_size"]
    for rank, record in enumerate(ranks):
        lo, hi = batch_bounds(batch, rank, WORLD)
        assert record["sizes"] == [hi - lo] * STEPS
    assert [json.loads(line)["step"] for line in (root / "ddp" / "train_log.jsonl").read_text().splitlines()] == [2, 4]

    half = load_checkpoint(root / "ddp_half" / "checkpoints" / "last.pt")
    assert half["step"] == STEPS // 2 and half["world_size"] == WORLD
    resumed = MAKERS[name](STEPS, root / "ddp_half", seed=30)
    assert resumed.dist is None
    resumed.fit()
    assert_equal_to_round_off(trainer_state(root / "ddp_half" / "checkpoints" / "last.pt"), single)
    # the comparison discriminates: a single process with rank 0's share of the batch ends elsewhere
    alone = MAKERS[name](STEPS, None, batch_size=batch_bounds(batch, 0, WORLD)[1])
    alone.fit()
    moved = {f"model.{k}": v for k, v in alone.model.state_dict().items()}
    assert max(float((moved[k] - single[k]).abs().max()) for k in moved) > 1e-4


@pytest.mark.parametrize("name,module,loss", [("functions", functions_module, "function_dsm_loss"),
                                              ("graphs", graph_module, "distance_dsm_loss")])  # fmt: skip
def test_fit_interrupted_between_checkpoints_resumes_bitwise(tmp_path, monkeypatch, name, module, loss):
    make = MAKERS[name]
    straight = make(7, None)
    straight.fit()
    calls = {"n": 0}
    real = getattr(module, loss)

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4 of 7: the last checkpoint is at step 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, loss, crashing)
    with pytest.raises(KeyboardInterrupt):
        make(7, tmp_path).fit()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2
    resumed = make(7, tmp_path, seed=5)  # a different initialisation: everything comes from last.pt
    resumed.fit()
    a, b = trainer_state_of(straight), trainer_state_of(resumed)
    assert a.keys() == b.keys() and not [k for k in a if not torch.equal(a[k], b[k])]
    assert resumed.history == straight.history and len(resumed.history) == 7
    assert torch.equal(resumed.noise_generator.get_state(), straight.noise_generator.get_state())
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6, 7]  # steps 3 and 4 ran twice, logged once


def trainer_state_of(trainer: TrainerBase) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    out |= {f"ema.{k}": v for k, v in trainer.ema_model.state_dict().items()}
    for i, s in trainer.optimizer.state_dict()["state"].items():
        out |= {f"adam.{i}.{k}": v for k, v in s.items()}
    return out


def test_checkpoints_of_another_trainer_or_layout_are_refused(tmp_path):
    function_trainer(2, tmp_path).fit()
    with pytest.raises(ValueError, match="written by FunctionTrainer"):
        graph_trainer(2, tmp_path).fit()
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    del state["trainer"]  # the FunctionTrainer layout before the shared loop (it counted its cursor in functions)
    with pytest.raises(ValueError, match="earlier version"):
        function_trainer(2, None).load_state_dict(state)
    legacy = Trainer(
        gd.NoisePredictor(net={"kind": "mlp", "dim": 2, "hidden": 4, "depth": 1}, process={"kind": "vp"}),
        gd.VPProcess(),
        torch.randn(8, 2),
        {"steps": 1, "batch_size": 4},
        tmp_path / "legacy",
        progress=False,
    )
    legacy.fit()
    state = load_checkpoint(legacy.checkpoint_path)
    del state["trainer"]  # a Trainer checkpoint from before: the layout is unchanged, so it resumes
    legacy.load_state_dict(state)
    assert legacy.step == 1


def test_load_ema_model_rebuilds_the_trainers_ema_network(tmp_path):
    trainer = Trainer(
        gd.TimeMLP(dim=2, hidden=8, depth=1),
        gd.VPProcess(),
        torch.randn(8, 2),
        {"steps": 3, "batch_size": 4},
        tmp_path,
        progress=False,
    )
    trainer.fit()
    model = load_ema_model(trainer.checkpoint_path)
    assert not model.training
    t, x = torch.full((5,), 0.3), torch.randn(5, 2)
    torch.testing.assert_close(model(t, x), trainer.ema_model(t, x), rtol=0, atol=0)
    gd.training.save_checkpoint(tmp_path / "other.pt", {"step": 1})
    with pytest.raises(ValueError, match="'model_spec' and 'ema'"):
        load_ema_model(tmp_path / "other.pt")


def test_graph_and_function_trainers_reject_bad_settings_before_training():
    gs, confs = graphs()
    model = EdgeScoreModel(hidden=8, layers=1, rbf=4, process={"kind": "distance_ve", "sigma_max": 3.0}).double()
    with pytest.raises(ValueError, match="weighting"):
        GraphTrainer(model, DistanceVEProcess(sigma_max=3.0), gs, confs, {"weighting": "likelihood", "batch_size": 2})
    with pytest.raises(ValueError, match="DistanceVEProcess"):
        GraphTrainer(model, gd.VPProcess(), gs, confs, {"batch_size": 2})
    with pytest.raises(ValueError, match="number of graphs"):
        GraphTrainer(model, DistanceVEProcess(sigma_max=3.0), gs, confs, {"batch_size": 5})
    with pytest.raises(ValueError, match="distributed=True"):
        graph_trainer(1, None, distributed=True)
    process = gd.build({"kind": "ou_gp", "kernel": {"kind": "squared_exponential"}})
    x, y = sample_functions("se", 4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    network = BiDimensionalAttention(hidden=8, heads=2, layers=1).double()
    with pytest.raises(ValueError, match="min_points"):
        FunctionTrainer(network, process, x, y, {"batch_size": 2, "min_points": 4})
    with pytest.raises(ValueError, match="number of functions"):
        FunctionTrainer(network, process, x, y, {"batch_size": 5})
    with pytest.raises(ValueError, match="dtype"):
        FunctionTrainer(network, process, x.float(), y.float(), {"batch_size": 2})


class MeanTrainer(TrainerBase):
    """The smallest subclass: items are rows of ``data``, the loss is the squared distance to a learnable mean."""

    spec_type = TrainingSpec
    item_name = "rows"

    def __init__(self, data: torch.Tensor, spec: dict, out_dir: Path | None = None) -> None:
        self.data = data
        torch.manual_seed(0)
        model = torch.nn.Linear(1, data.shape[1], bias=False).double()
        super().__init__(model, gd.VPProcess(), spec, out_dir, "cpu", False, None)

    @property
    def num_items(self) -> int:
        return len(self.data)

    def _gather(self, index: torch.Tensor) -> torch.Tensor:
        return self.data[index]

    def _loss(self, batch: torch.Tensor, model) -> torch.Tensor:
        return (batch - model.weight.T).pow(2).sum(-1).mean()


def test_a_subclass_supplying_items_gather_and_loss_trains_and_resumes(tmp_path):
    with pytest.raises(TypeError, match="abstract"):
        TrainerBase(torch.nn.Linear(1, 1), gd.VPProcess(), TrainingSpec(), None, "cpu", False, None)
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 3.0
    spec = {"steps": 200, "batch_size": 16, "lr": 0.1, "ema_decay": 0.9, "checkpoint_every": 50, "log_every": 50}
    straight = MeanTrainer(data, spec)
    straight.fit()
    torch.testing.assert_close(straight.model.weight.T[0], data.mean(0), atol=0.15, rtol=0)
    MeanTrainer(data, {**spec, "steps": 70}, tmp_path).fit()
    resumed = MeanTrainer(data, spec, tmp_path)
    resumed.fit()
    assert resumed.history == straight.history and torch.equal(resumed.ema_model.weight, straight.ema_model.weight)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["trainer"] == "TrainerBase"
    with pytest.raises(ValueError, match="rows"):
        MeanTrainer(data[:8], spec)


def test_divergence_is_caught_at_the_flush_before_any_log_or_checkpoint(tmp_path, monkeypatch):
    """Losses stay on the device between log/checkpoint steps; a non-finite one is reported with its step, and nothing
    from the diverged steps reaches the log, the checkpoint or the history."""
    real = functions_module.function_dsm_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(functions_module, "function_dsm_loss", poisoned)
    trainer = function_trainer(8, tmp_path, checkpoint_every=4, log_every=4)
    with pytest.raises(FloatingPointError, match="at step 3"):
        trainer.fit()
    assert trainer.history == [] and not (tmp_path / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "train_log.jsonl").read_text() == ""
