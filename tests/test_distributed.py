"""Distributed data-parallel training (2 CPU ranks, gloo) equals single-process training with the same global batch;
checkpoints move between DDP and single-process runs; the Trainer dispatches to the Riemannian DSM loss on manifolds."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TINY_QUICKSTART

import geodiffusion as gd
from geodiffusion.cli import main
from geodiffusion.training import Trainer, TrainingSpec, derive_seed, riemannian_dsm_loss
from geodiffusion.training.distributed import RankSlicedScore, batch_bounds, setup_distributed

WORLD = 2
# every test that starts gloo workers runs on one xdist worker (tox: --dist loadgroup): two such tests at once can
# race for ports (free_port()'s pick against the other test's gloo sockets), and a rank that joins the wrong group
# hangs, the suspected cause of a worker timeout seen once in CI
DDP_GROUP = pytest.mark.xdist_group("ddp")
pytestmark = DDP_GROUP
# 31 = 16 + 15: uneven slices exercise the padded all-gather
SPEC = {"batch_size": 31, "lr": 1e-2, "ema_decay": 0.9, "checkpoint_every": 3, "log_every": 2, "seed": 4}
# float64 data and model: the only differences between the runs are summation orders (gradients summed over
# 16 + 15 rows and averaged over ranks vs summed over 31). Measured: max |difference| 5.6e-17 over the parameters,
# EMA and Adam moments after 6 steps (parameters of size ~1); the bound leaves room for other BLAS builds
ROUND_OFF = 1e-13


def spec(steps: int, **changes) -> TrainingSpec:
    return TrainingSpec(**{**SPEC, "steps": steps, **changes})


def gaussian_data(n: int = 96) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn((n, 2), generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.5], dtype=torch.float64) + 0.3


def small_model(seed: int) -> gd.ScoreModel:
    torch.manual_seed(seed)
    return gd.NoisePredictor(net={"kind": "mlp", "dim": 2, "hidden": 16, "depth": 2}, process={"kind": "vp"}).double()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_env(rank: int, port: int) -> None:
    """The variables torchrun sets for worker ``rank`` of ``WORLD`` on one node."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _worker(rank: int, port: int, root: str) -> None:
    """One torchrun-like worker: the Trainer finds the process group from the environment variables alone."""
    torchrun_env(rank, port)
    torch.set_num_threads(1)
    root_path = Path(root)
    process, data = gd.VPProcess(), gaussian_data()
    try:
        # a different initialisation on each rank: DDP must start every rank from rank 0's parameters
        model = small_model(seed=rank)
        rows: list[int] = []
        model.register_forward_hook(lambda module, args, out: rows.append(int(args[1].shape[0])))
        trainer = Trainer(model, process, data, spec(6), out_dir=root_path / "ddp", progress=False)
        assert trainer.dist is not None and trainer.dist.world_size == WORLD and trainer.dist.rank == rank
        trainer.fit()
        torch.save({"history": trainer.history, "rows": rows}, root_path / f"rank{rank}.pt")
        # the explicit switch: off trains alone under torchrun, on joins the initialised group
        assert Trainer(small_model(seed=0), process, data, spec(1), progress=False, distributed=False).dist is None
        assert Trainer(small_model(seed=0), process, data, spec(1), progress=False, distributed=True).dist.rank == rank
        # a DDP run stopped at step 3 (the parent resumes it in a single process) ...
        init = small_model(seed=0 if rank == 0 else 10 + rank)
        Trainer(init, process, data, spec(3), out_dir=root_path / "ddp_half", progress=False).fit()
        # ... and a single-process checkpoint at step 3 resumed by DDP
        Trainer(small_model(seed=20 + rank), process, data, spec(6), out_dir=root_path / "from_single", progress=False).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _traced(rank: int, worker, port: int, root: str, dump_after_s: float) -> None:
    """Run ``worker`` and, should it still be running after ``dump_after_s``, write every thread's stack to a file."""
    with open(Path(root) / f"stack{rank}.txt", "w") as stacks:
        faulthandler.dump_traceback_later(dump_after_s, file=stacks)
        try:
            worker(rank, port, root)
        finally:
            faulthandler.cancel_dump_traceback_later()


def run_workers(root: Path, worker=_worker, timeout_s: float = 120.0) -> None:
    # spawn, not fork: a pytest-xdist worker runs execnet's I/O threads, and a fork can copy a lock one of them holds
    # into the child, where nothing releases it; the suspected cause of two worker timeouts in CI. A fresh
    # interpreter costs each worker a few seconds of imports
    args = (worker, free_port(), str(root), timeout_s - 10)
    context = mp.start_processes(_traced, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in context.processes:
                if proc.is_alive():
                    proc.kill()
            stacks = "\n".join(f"rank {r}:\n{(root / f'stack{r}.txt').read_text()}" for r in range(WORLD))
            pytest.fail(f"distributed workers did not finish within {timeout_s} s; their stacks:\n{stacks}")


def trainer_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    out = {f"model.{k}": v for k, v in state["model"].items()}
    out |= {f"ema.{k}": v for k, v in state["ema"]["model"].items()}
    for i, s in state["optimizer"]["state"].items():
        out |= {f"adam.{i}.{k}": v for k, v in s.items() if v.is_floating_point()}
    return out


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and len(a) > 10
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    # module fixtures run before conftest's per-test one_thread: the reference runs use one thread, as the workers do
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    process, data = gd.VPProcess(), gaussian_data()
    straight = Trainer(small_model(seed=0), process, data, spec(6), out_dir=root / "single", progress=False)
    straight.fit()
    Trainer(small_model(seed=0), process, data, spec(3), out_dir=root / "from_single", progress=False).fit()
    start = time.perf_counter()
    try:
        run_workers(root)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "straight": straight, "seconds": time.perf_counter() - start}


def test_ddp_parameters_equal_a_single_process_with_the_same_global_batch(runs):
    root = runs["root"]
    single = trainer_state(root / "single" / "checkpoints" / "last.pt")
    ddp = trainer_state(root / "ddp" / "checkpoints" / "last.pt")
    difference = max_difference(ddp, single)
    assert difference < ROUND_OFF, difference
    # the comparison discriminates: a single process with a rank's batch (16) ends far away
    alone = Trainer(small_model(seed=0), gd.VPProcess(), gaussian_data(), spec(6, batch_size=16), progress=False)
    alone.fit()
    other = {f"model.{k}": v for k, v in alone.model.state_dict().items()}
    assert max(float((other[k] - single[k]).abs().max()) for k in other) > 1e-4

    ranks = [torch.load(root / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # every rank logs the global-batch loss (the same on all ranks), equal to the single process's
    assert ranks[0]["history"] == ranks[1]["history"]
    assert max(abs(a - b) for a, b in zip(ranks[0]["history"], runs["straight"].history, strict=True)) < ROUND_OFF
    # each rank ran its model on its slice of the global batch only (the first call is the Trainer's shape check)
    for rank, record in enumerate(ranks):
        lo, hi = batch_bounds(31, rank, WORLD)
        assert record["rows"][0] == 2 and set(record["rows"][1:]) == {hi - lo} and len(record["rows"]) == 1 + 6


def test_only_rank_zero_writes_logs_and_checkpoints(runs):
    root = runs["root"]
    records = [json.loads(line) for line in (root / "ddp" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert sorted(p.name for p in (root / "ddp" / "checkpoints").iterdir()) == ["last.pt"]
    state = torch.load(root / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == WORLD and state["step"] == 6
    assert not any(k.startswith("module.") for k in state["model"])  # the bare model: loadable without DDP


def test_a_ddp_checkpoint_resumes_in_a_single_process(runs):
    root = runs["root"]
    assert torch.load(root / "ddp_half" / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    resumed = Trainer(small_model(seed=30), gd.VPProcess(), gaussian_data(), spec(6), out_dir=root / "ddp_half", progress=False)
    resumed.fit()
    single = trainer_state(root / "single" / "checkpoints" / "last.pt")
    difference = max_difference(trainer_state(root / "ddp_half" / "checkpoints" / "last.pt"), single)
    assert difference < ROUND_OFF, difference
    assert len(resumed.history) == 6


def test_a_single_process_checkpoint_resumes_under_ddp(runs):
    root = runs["root"]
    single = trainer_state(root / "single" / "checkpoints" / "last.pt")
    difference = max_difference(trainer_state(root / "from_single" / "checkpoints" / "last.pt"), single)
    assert difference < ROUND_OFF, difference
    assert runs["seconds"] < 60, runs["seconds"]


def _cli_worker(rank: int, port: int, root: str) -> None:
    """``torchrun --nproc_per_node=2 -m geodiffusion run quickstart ...``, one worker."""
    torchrun_env(rank, port)
    root_path = Path(root)
    argv = ["run", "quickstart", "--quick", "--config", str(root_path / "tiny.json"), "--out", str(root_path / "out")]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = main([*argv, "--no-progress"])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    (root_path / f"stdout{rank}.txt").write_text(f"{code}\n{out.getvalue()}")


def test_cli_run_under_torchrun_trains_data_parallel_and_only_rank_zero_writes(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_QUICKSTART))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_workers(tmp_path, _cli_worker)
    finally:
        torch.set_num_threads(threads)
    code0, *lines0 = (tmp_path / "stdout0.txt").read_text().splitlines()
    assert code0 == "0" and "metrics:" in lines0
    assert (tmp_path / "stdout1.txt").read_text() == "0\n"  # rank 1: exit code 0, nothing printed
    out = tmp_path / "out"
    assert {"spec.json", "metrics.json", "samples.png", "loss.png"} <= {p.name for p in out.iterdir()}
    steps = TINY_QUICKSTART["training"]["steps"]
    for name in ("mlp", "frame_averaged"):
        state = torch.load(out / name / "checkpoints" / "last.pt", weights_only=True)
        assert state["world_size"] == WORLD and state["step"] == steps
        logged = [json.loads(line)["step"] for line in (out / name / "train_log.jsonl").read_text().splitlines()]
        assert logged == list(range(5, steps + 1, 5))  # each step logged once: rank 0 only
    assert all(v is None or math.isfinite(v) for v in json.loads((out / "metrics.json").read_text()).values())


# --- the building blocks ---------------------------------------------------------------------------------


def test_batch_bounds_tile_the_global_batch():
    for batch in (2, 7, 31, 64):
        for world in range(1, min(batch, 5) + 1):
            bounds = [batch_bounds(batch, r, world) for r in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == batch
            assert all(a[1] == b[0] for a, b in zip(bounds[:-1], bounds[1:], strict=True))
            assert max(h - lo for lo, h in bounds) - min(h - lo for lo, h in bounds) <= 1
    with pytest.raises(ValueError, match="world size"):
        batch_bounds(1, 0, 2)
    with pytest.raises(ValueError, match="rank"):
        batch_bounds(4, 2, 2)


def test_without_torchrun_training_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert setup_distributed("cpu") is None and setup_distributed("cpu", distributed=False) is None
    with pytest.raises(ValueError, match="torchrun"):
        setup_distributed("cpu", distributed=True)
    trainer = Trainer(small_model(seed=0), gd.VPProcess(), gaussian_data(), spec(1), progress=False)
    assert trainer.dist is None and trainer.is_main
    # torchrun with one worker: still a plain single process
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert setup_distributed("cpu") is None and not dist.is_initialized()


def test_rank_sliced_score_rejects_context():
    from geodiffusion.training.distributed import DistributedContext

    score = RankSlicedScore(lambda t, x: x, DistributedContext(rank=0, world_size=1, local_rank=0, backend="gloo"))
    with pytest.raises(ValueError, match="context"):
        score(torch.zeros(2), torch.zeros(2, 2), mask=None)


# --- loss dispatch: processes on manifolds train with the Riemannian DSM loss ------------------------------------


def test_trainer_uses_riemannian_dsm_with_sigma2_weighting_on_s2():
    process = gd.build({"kind": "brownian", "manifold": {"kind": "sphere", "dim": 2}})
    gen = torch.Generator().manual_seed(0)
    # data concentrated near the north pole: a target the model can learn in a few dozen steps
    north = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    data = process.marginal(north.expand(512, 3), torch.full((512,), 0.03, dtype=torch.float64)).sample(gen).float()
    torch.manual_seed(0)
    model = gd.build({"kind": "tangent_mlp", "manifold": {"kind": "sphere", "dim": 2}, "hidden": 32, "depth": 2,
                      "process": process.spec.model_dump()})  # fmt: skip
    settings = TrainingSpec(steps=60, batch_size=64, lr=1e-2, ema_decay=0.9, weighting="sigma2", eps=1e-3, seed=1)
    trainer = Trainer(model, process, data, settings, progress=False)

    # step 1 is riemannian_dsm_loss on the first batch with the trainer's generators
    first = trainer.data[torch.randperm(512, generator=torch.Generator().manual_seed(derive_seed(1, "data")))[:64]]
    noise = torch.Generator().manual_seed(derive_seed(1, "noise"))
    with torch.no_grad():
        expected = float(riemannian_dsm_loss(trainer.model, process, first, generator=noise, weighting="sigma2", eps=1e-3))
    history = trainer.fit()
    assert history[0] == pytest.approx(expected, rel=1e-6)
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-15:]) < 0.8 * sum(history[:15]), (history[:15], history[-15:])


def test_trainer_checks_riemannian_settings_before_training():
    process = gd.build({"kind": "brownian", "manifold": {"kind": "sphere", "dim": 2}})
    data = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    model = gd.build({"kind": "tangent_mlp", "manifold": {"kind": "sphere", "dim": 2}, "hidden": 8, "depth": 1})
    with pytest.raises(ValueError, match="eps must be positive"):
        Trainer(model, process, data, TrainingSpec(steps=1, batch_size=8, eps=0.0), progress=False)
