"""BridgeTrainer: bridge score matching through the shared loop: 2-rank DDP equals one process, a fit interrupted
between checkpoints resumes bit-for-bit, bad pairs are refused before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_distributed import DDP_GROUP, ROUND_OFF, WORLD, max_difference, run_workers, torchrun_env, trainer_state

import geodiffusion as gd
from geodiffusion.processes.bridges import DenoiserBridgeScore
from geodiffusion.training import bridges as bridges_module
from geodiffusion.training import load_checkpoint
from geodiffusion.training.bridges import BridgeTrainer

STEPS = 4
# two groups of four channels: GroupNorm keeps per-channel biases (one channel per group would remove them, leaving
# parameters whose exact gradient is zero and whose Adam updates are amplified round-off)
NET = {"kind": "unet", "image_channels": 2, "image_size": 4, "channels": [8], "norm_groups": 2}
# 7 pairs per batch over 2 ranks: uneven slices (4 + 3)
SPEC = {"batch_size": 7, "lr": 1e-2, "ema_decay": 0.9, "checkpoint_every": 2, "log_every": 2, "seed": 3}


def pairs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(20, 1, 4, 4, generator=gen, dtype=torch.float64)
    return x0, x0 + 0.5 * torch.randn(20, 1, 4, 4, generator=gen, dtype=torch.float64)


def bridge_trainer(steps: int, out: Path | None, seed: int = 0, distributed: bool | None = None, **changes) -> BridgeTrainer:
    bridge = gd.build({"kind": "vp_bridge", "event_ndim": 3})
    torch.manual_seed(seed)
    net = gd.build(NET, gd.ScoreModel).double()
    return BridgeTrainer(
        DenoiserBridgeScore(net, bridge), bridge, *pairs(), {**SPEC, "steps": steps, **changes}, out, progress=False,
        distributed=distributed,
    )  # fmt: skip


def _worker(rank: int, port: int, root: str) -> None:
    torchrun_env(rank, port)
    torch.set_num_threads(1)
    try:
        trainer = bridge_trainer(STEPS, Path(root) / "ddp", seed=rank)
        assert trainer.dist is not None and trainer.dist.world_size == WORLD
        trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@DDP_GROUP
def test_ddp_bridge_training_equals_one_process(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bridge_trainer(STEPS, tmp_path / "single").fit()
        run_workers(tmp_path, _worker)
    finally:
        torch.set_num_threads(threads)
    single = trainer_state(tmp_path / "single" / "checkpoints" / "last.pt")
    assert max_difference(trainer_state(tmp_path / "ddp" / "checkpoints" / "last.pt"), single) < ROUND_OFF
    # the comparison discriminates: rank 0's share of the batch alone ends elsewhere
    alone = bridge_trainer(STEPS, tmp_path / "alone", batch_size=4)
    alone.fit()
    assert max_difference(trainer_state(tmp_path / "alone" / "checkpoints" / "last.pt"), single) > 1e-4


def test_bridge_fit_interrupted_between_checkpoints_resumes_bitwise(tmp_path, monkeypatch):
    straight = bridge_trainer(5, None)
    straight.fit()
    calls = {"n": 0}
    real = bridges_module.bridge_score_matching_loss

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4 of 5: the last checkpoint is at step 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bridges_module, "bridge_score_matching_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        bridge_trainer(5, tmp_path).fit()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2
    resumed = bridge_trainer(5, tmp_path, seed=9)
    resumed.fit()
    assert resumed.history == straight.history
    for a, b in zip(resumed.ema_model.state_dict().values(), straight.ema_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bridge_trainer_rejects_bad_pairs_before_training():
    x0, x_T = pairs()
    bridge = gd.build({"kind": "vp_bridge", "event_ndim": 3})
    net = gd.build(NET, gd.ScoreModel).double()
    score = DenoiserBridgeScore(net, bridge)
    with pytest.raises(ValueError, match="equal shapes"):
        BridgeTrainer(score, bridge, x0, x_T[:10], {"batch_size": 4})
    bad = x_T.clone()
    bad[3, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="x_T: contains NaN"):
        BridgeTrainer(score, bridge, x0, bad, {"batch_size": 4})
    with pytest.raises(ValueError, match="weighting"):
        BridgeTrainer(score, bridge, x0, x_T, {"batch_size": 4}, weighting="likelihood")
    with pytest.raises(ValueError, match="number of pairs"):
        BridgeTrainer(score, bridge, x0, x_T, {"batch_size": 21})
    with pytest.raises(TypeError, match="DiffusionBridge"):
        BridgeTrainer(score, gd.VPProcess(), x0, x_T, {"batch_size": 4})
