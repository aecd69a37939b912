"""Training stack: the DSM loss against the exact Gaussian oracle, EMA, atomic checkpoints, the trainer."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import geodiffusion as gd
import geodiffusion.training.trainer as trainer_module
from geodiffusion.testing import GaussianScore
from geodiffusion.training import EMA, Trainer, TrainingSpec, derive_seed, dsm_loss, load_checkpoint, save_checkpoint

MEAN = torch.tensor([0.5, -1.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)


@pytest.fixture(autouse=True)
def one_thread():
    # pytest -n 2 on two cores: one intra-op thread per worker avoids oversubscription (tiny ops, large overhead)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_data(n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((n, 2), generator=gen, dtype=torch.float64)
    return (MEAN + z @ torch.linalg.cholesky(COV).T).to(dtype)


def weight(process, t, weighting):
    return {"sigma2": process.std(t) ** 2, "likelihood": process.diffusion(t) ** 2, "none": torch.ones_like(t)}[weighting]


def time_average(f, process, eps, n=200_001):
    r""":math:`\mathbb{E}_{t \sim U[\varepsilon, T]} f(t)` by the trapezoid rule on a log-spaced grid (f is steep near 0)."""
    log_t = torch.linspace(math.log(eps), math.log(process.T), n, dtype=torch.float64)
    t = log_t.exp()
    return float(torch.trapezoid(f(t) * t, log_t) / (process.T - eps))


def moments(process, t):
    alpha = process.mean_scale(t)
    sigma2 = process.std(t) ** 2
    cov_t = alpha[:, None, None] ** 2 * COV + sigma2[:, None, None] * torch.eye(2, dtype=torch.float64)
    return alpha, sigma2, cov_t


def batched_estimates(mean_param, process, weighting, eps, batches=16, size=8192):
    """DSM loss and its gradient in the oracle's mean over independent batches: (losses [K], grads [K, 2])."""
    losses, grads = [], []
    gen = torch.Generator().manual_seed(1)
    for b in range(batches):
        x0 = gaussian_data(size, seed=100 + b)
        mean = mean_param.clone().requires_grad_(True)
        loss = dsm_loss(GaussianScore(process, mean, COV), process, x0, generator=gen, weighting=weighting, eps=eps)
        (grad,) = torch.autograd.grad(loss, mean)
        losses.append(loss.detach())
        grads.append(grad)
    return torch.stack(losses), torch.stack(grads)


def mean_and_se(values: torch.Tensor):
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


CASES = [("sigma2", 1e-3), ("likelihood", 0.05), ("none", 0.05)]


@pytest.mark.parametrize("weighting,eps", CASES)
def test_dsm_loss_of_exact_score_is_the_irreducible_minimum(weighting, eps):
    # E||s* - target||^2 = E||target||^2 - E||s*||^2 = d / sigma_t^2 - tr C_t^{-1}, C_t = alpha^2 Sigma + sigma^2 I
    process = gd.VPProcess()
    losses, _ = batched_estimates(MEAN, process, weighting, eps)
    estimate, se = mean_and_se(losses)

    def f(t):
        _, sigma2, cov_t = moments(process, t)
        return weight(process, t, weighting) * (2 / sigma2 - torch.linalg.inv(cov_t).diagonal(dim1=-2, dim2=-1).sum(-1))

    exact = time_average(f, process, eps)
    assert abs(float(estimate) - exact) < 5 * float(se), (float(estimate), exact, float(se))


@pytest.mark.parametrize("weighting,eps", CASES)
def test_dsm_excess_loss_and_gradient_of_a_shifted_oracle_are_exact(weighting, eps):
    # s_{mu + delta} = s* + alpha C^{-1} delta: excess loss E_t[lambda alpha^2 |C^{-1} delta|^2],
    # gradient in the mean 2 E_t[lambda alpha^2 C^{-2}] delta (zero at the true mean)
    process = gd.VPProcess()
    delta = torch.tensor([0.3, -0.2], dtype=torch.float64)
    base_losses, base_grads = batched_estimates(MEAN, process, weighting, eps)
    shifted_losses, shifted_grads = batched_estimates(MEAN + delta, process, weighting, eps)

    def c_inv2(t):
        alpha, _, cov_t = moments(process, t)
        inv = torch.linalg.inv(cov_t)
        return (weight(process, t, weighting) * alpha**2)[:, None, None] * (inv @ inv)

    exact_excess = time_average(lambda t: (c_inv2(t) @ delta * delta).sum(-1), process, eps)
    exact_grad = torch.tensor([time_average(lambda t, i=i: 2 * (c_inv2(t) @ delta)[:, i], process, eps) for i in range(2)])

    excess, excess_se = mean_and_se(shifted_losses - base_losses)  # paired: same t and noise
    assert abs(float(excess) - exact_excess) < 5 * float(excess_se) + 1e-12
    assert float(excess) > 10 * float(excess_se), "a shifted oracle must be detectably worse"

    grad0, grad0_se = mean_and_se(base_grads)
    assert (grad0.abs() < 5 * grad0_se).all(), (grad0, grad0_se)
    grad, grad_se = mean_and_se(shifted_grads)
    assert ((grad - exact_grad).abs() < 5 * grad_se).all(), (grad, exact_grad, grad_se)
    assert (grad.abs() > 10 * grad_se).all()


def test_dsm_loss_is_reproducible_under_a_generator_and_follows_dtype():
    process = gd.VPProcess()
    x0 = gaussian_data(64, seed=0, dtype=torch.float32)
    oracle = GaussianScore(process, MEAN.float(), COV.float())
    a = dsm_loss(oracle, process, x0, generator=torch.Generator().manual_seed(3))
    b = dsm_loss(oracle, process, x0, generator=torch.Generator().manual_seed(3))
    c = dsm_loss(oracle, process, x0, generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.float32 and a.dim() == 0
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert dsm_loss(GaussianScore(process, MEAN, COV), process, x0.double()).dtype == torch.float64


def test_dsm_loss_passes_context_and_sums_over_event_axes_only():
    # event_ndim=1 on sets [B, N, 2]: per-point losses summed over the 2 coordinates, averaged over B and N
    process = gd.VPProcess(event_ndim=1)
    seen = {}

    def zero_model(t, x, **context):
        seen.update(context)
        return torch.zeros_like(x)

    x0 = torch.zeros(8, 5, 2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    loss = dsm_loss(zero_model, process, x0, generator=gen, weighting="sigma2", context={"mask": "m"})
    assert seen == {"mask": "m"}
    # with x0 = 0 and s = 0: lambda |target|^2 = sigma^2 |eps / sigma|^2 = |eps|^2, mean over B*N points of chi^2_2
    gen = torch.Generator().manual_seed(0)
    t = 1e-3 + (1 - 1e-3) * torch.rand((8,), generator=gen, dtype=torch.float64)
    noise = torch.randn((8, 5, 2), generator=gen, dtype=torch.float64)
    assert t.shape == (8,)
    torch.testing.assert_close(loss, (noise**2).sum(-1).mean())


class _NonLinearProcess(gd.Process, register=False):
    """A test double: a process without std(t)."""

    def __init__(self):
        super().__init__()
        self._vp = gd.VPProcess()

    T = property(lambda self: 1.0)
    event_ndim = property(lambda self: 1)

    def drift(self, x, t):
        return self._vp.drift(x, t)

    def diffusion(self, t):
        return self._vp.diffusion(t)

    def marginal(self, x0, t):
        return self._vp.marginal(x0, t)

    def prior(self, shape, *, device=None, dtype=None):
        return self._vp.prior(shape, device=device, dtype=dtype)


def test_dsm_loss_rejects_bad_input():
    process = gd.VPProcess()
    oracle = GaussianScore(process, MEAN, COV)
    x0 = gaussian_data(16, seed=0)
    with pytest.raises(ValueError, match="LinearGaussianProcess"):
        dsm_loss(oracle, _NonLinearProcess(), x0, weighting="sigma2")
    # the other weightings need only g(t), so any process works
    assert torch.isfinite(dsm_loss(oracle, _NonLinearProcess(), x0, weighting="likelihood", eps=0.05))
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(oracle, process, x0, weighting="sigma")
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(oracle, process, x0, eps=1.0)
    with pytest.raises(ValueError, match="NaN"):
        dsm_loss(oracle, process, torch.full((4, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="batch axis"):
        dsm_loss(oracle, process, x0[0])
    with pytest.raises(ValueError, match="model output"):
        dsm_loss(lambda t, x: x[:, :1], process, x0)
    with pytest.raises(TypeError, match="floating"):
        dsm_loss(oracle, process, torch.ones(4, 2, dtype=torch.long))


# --- EMA ----------------------------------------------------------------------------------------


def test_ema_follows_the_warmed_up_recursion_and_copies_buffers():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.5)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(7.0)
    ema.update(model)  # beta_0 = min(0.5, 1/10) = 0.1
    torch.testing.assert_close(ema.model[0].weight, 0.1 * w0 + 0.9 * (w0 + 1.0), rtol=0, atol=1e-6)
    assert torch.equal(ema.model[1].running_mean, torch.full((3,), 7.0))
    for _ in range(20):
        ema.update(model)
    assert ema.current_decay() == 0.5  # warm-up over: (1 + 21) / (10 + 21) > 0.5
    torch.testing.assert_close(ema.model[0].weight, model[0].weight, rtol=0, atol=1e-5)
    # a deep copy: changing the model without update() leaves the shadow alone
    with torch.no_grad():
        model[0].weight.zero_()
    assert not torch.equal(ema.model[0].weight, model[0].weight)


def test_ema_state_round_trips_and_rejects_bad_decay():
    model = nn.Linear(2, 2)
    ema = EMA(model, 0.9)
    ema.update(model)
    other = EMA(nn.Linear(2, 2), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.updates == 1
    assert torch.equal(other.model.weight, ema.model.weight)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, 1.5)


# --- checkpoints ----------------------------------------------------------------------------------


def test_checkpoint_round_trips_tensors_generators_and_rng_states(tmp_path):
    gen = torch.Generator().manual_seed(5)
    state = {"w": torch.randn(3), "gen": gen.get_state(), "py": random.getstate(), "spec": {"lr": 0.1, "clip": None}}
    path = save_checkpoint(tmp_path / "sub" / "last.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["spec"] == state["spec"]
    restored = torch.Generator()
    restored.set_state(loaded["gen"])
    assert torch.equal(torch.rand(4, generator=restored), torch.rand(4, generator=gen))
    assert loaded["py"] == state["py"]
    assert list((tmp_path / "sub").iterdir()) == [path]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})

    def crash(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"step": 1}  # the previous checkpoint is intact
    assert list(tmp_path.iterdir()) == [path]  # and no temporary file is left behind
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


# --- trainer ------------------------------------------------------------------------------------


def small_model(seed=0) -> gd.ScoreModel:
    torch.manual_seed(seed)
    return gd.NoisePredictor(net={"kind": "mlp", "dim": 2, "hidden": 16, "depth": 2}, process={"kind": "vp"})


def spec(**changes) -> TrainingSpec:
    fields = {"steps": 24, "batch_size": 32, "lr": 1e-2, "ema_decay": 0.9, "checkpoint_every": 5, "log_every": 4}
    return TrainingSpec(**{**fields, **changes})


def all_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
    out |= {f"ema.{k}": v for k, v in trainer.ema_model.state_dict().items()}
    for i, s in trainer.optimizer.state_dict()["state"].items():
        out |= {f"adam.{i}.{k}": v for k, v in s.items()}
    return out


def assert_bitwise_equal(a: Trainer, b: Trainer) -> None:
    sa, sb = all_state(a), all_state(b)
    assert sa.keys() == sb.keys() and len(sa) > 10
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, different
    assert a.history == b.history and a.step == b.step
    assert torch.equal(a.noise_generator.get_state(), b.noise_generator.get_state())


def crash_at_step(monkeypatch, trainer: Trainer, step: int) -> None:
    """``trainer.fit()`` interrupted during ``step`` (its DSM loss raises KeyboardInterrupt there), as by a crash."""
    real_loss, calls = trainer_module.dsm_loss, {"n": 0}

    def crashing_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "dsm_loss", crashing_loss)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.undo()


def test_resumed_training_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    process = gd.VPProcess()
    data = gaussian_data(200, seed=0, dtype=torch.float32)
    straight = Trainer(small_model(), process, data, spec(steps=24), progress=False)
    straight.fit()

    first = Trainer(small_model(), process, data, spec(steps=12), out_dir=tmp_path, progress=False)
    first.fit()
    # a new object with a differently initialised model: everything must come from last.pt
    resumed = Trainer(small_model(seed=1), process, data, spec(steps=24), out_dir=tmp_path, progress=False)
    resumed.fit()
    assert_bitwise_equal(straight, resumed)
    assert not torch.equal(straight.model.net.net[0].weight, straight.ema_model.net.net[0].weight)


def test_training_interrupted_between_checkpoints_resumes_bitwise(tmp_path, monkeypatch):
    process = gd.VPProcess()
    data = gaussian_data(200, seed=0, dtype=torch.float32)
    straight = Trainer(small_model(), process, data, spec(), progress=False)
    straight.fit()

    # interrupted during step 18: the last checkpoint is at step 15
    crash_at_step(monkeypatch, Trainer(small_model(), process, data, spec(), out_dir=tmp_path, progress=False), 18)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 15

    resumed = Trainer(small_model(seed=2), process, data, spec(), out_dir=tmp_path, progress=False)
    history = resumed.fit()
    assert_bitwise_equal(straight, resumed)
    assert len(history) == 24
    # the log holds each logged step once, in order, although steps 16 and 17 ran twice
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12, 16, 20, 24]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] is not None for r in records)


def test_resuming_with_different_settings_is_refused(tmp_path):
    process = gd.VPProcess()
    data = gaussian_data(100, seed=0, dtype=torch.float32)
    Trainer(small_model(), process, data, spec(steps=5), out_dir=tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match="lr"):
        Trainer(small_model(), process, data, spec(steps=10, lr=0.5), out_dir=tmp_path, progress=False).fit()


def test_learning_rate_schedules():
    constant = spec(lr=0.1)
    assert [constant.lr_at(k) for k in (0, 5, 23)] == [0.1, 0.1, 0.1]
    warm = spec(lr=0.1, warmup_steps=4)
    assert [warm.lr_at(k) for k in range(6)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1])
    cosine = spec(lr=0.1, steps=14, warmup_steps=4, lr_schedule="cosine")
    lrs = [cosine.lr_at(k) for k in range(14)]
    assert lrs[3] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.05)
    assert lrs[13] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.9)))
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    with pytest.raises(ValidationError, match="warmup_steps"):
        spec(steps=10, warmup_steps=11)
    with pytest.raises(ValidationError, match="lr_schedule"):
        spec(lr_schedule="linear")


def test_cosine_schedule_is_applied_logged_and_resumed_bitwise(tmp_path, monkeypatch):
    process = gd.VPProcess()
    data = gaussian_data(200, seed=0, dtype=torch.float32)
    scheduled = spec(lr_schedule="cosine", warmup_steps=6)
    straight = Trainer(small_model(), process, data, scheduled, progress=False)
    straight.fit()
    constant = Trainer(small_model(), process, data, spec(), progress=False)
    assert constant.fit() != straight.history

    crash_at_step(monkeypatch, Trainer(small_model(), process, data, scheduled, out_dir=tmp_path, progress=False), 18)
    resumed = Trainer(small_model(seed=2), process, data, scheduled, out_dir=tmp_path, progress=False)
    resumed.fit()
    assert_bitwise_equal(straight, resumed)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == [scheduled.lr_at(r["step"] - 1) for r in records]
    # the cosine ends at `steps`: extending the run would not reproduce it, unlike a constant rate
    with pytest.raises(ValueError, match="steps"):
        Trainer(small_model(), process, data, spec(steps=30, lr_schedule="cosine", warmup_steps=6), out_dir=tmp_path).fit()


def test_checkpoints_from_before_a_spec_field_existed_resume(tmp_path):
    process = gd.VPProcess()
    data = gaussian_data(100, seed=0, dtype=torch.float32)
    Trainer(small_model(), process, data, spec(steps=5), out_dir=tmp_path, progress=False).fit()
    path = tmp_path / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    del state["spec"]["lr_schedule"], state["spec"]["warmup_steps"]
    save_checkpoint(path, state)
    resumed = Trainer(small_model(), process, data, spec(steps=10), out_dir=tmp_path, progress=False)
    resumed.fit()
    assert resumed.step == 10
    with pytest.raises(ValueError, match="warmup_steps"):
        save_checkpoint(path, state)
        Trainer(small_model(), process, data, spec(steps=10, warmup_steps=2), out_dir=tmp_path, progress=False).fit()


def test_seed_determines_the_run():
    process = gd.VPProcess()
    data = gaussian_data(100, seed=0, dtype=torch.float32)
    runs = [Trainer(small_model(), process, data, spec(steps=6, seed=s), progress=False) for s in (0, 0, 1)]
    histories = [t.fit() for t in runs]
    assert histories[0] == histories[1] and histories[0] != histories[2]
    assert derive_seed(0, "data") != derive_seed(0, "noise") != derive_seed(1, "noise")
    assert derive_seed(3, "data") == derive_seed(3, "data")


class LearnableMeanScore(nn.Module):
    """The exact score of N(mean, COV) data with the mean as the only parameter."""

    def __init__(self, process):
        super().__init__()
        self.process = process
        self.mean = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, t, x):
        return GaussianScore(self.process, self.mean, COV)(t, x)


def test_trainer_recovers_the_mean_of_gaussian_data(tmp_path):
    process = gd.VPProcess()
    data = gaussian_data(4096, seed=0)
    trainer = Trainer(
        LearnableMeanScore(process), process, data, spec(steps=300, batch_size=256, lr=0.05), out_dir=tmp_path, progress=False
    )
    history = trainer.fit()
    # the DSM minimiser in this family is close to the sample mean (std error ~ 0.015 per coordinate)
    torch.testing.assert_close(trainer.ema_model.mean.detach(), data.mean(0), atol=0.06, rtol=0)
    assert sum(history[-50:]) < sum(history[:50])
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 300 // 4


def test_trainer_runs_without_clipping_and_logs_null_grad_norm(tmp_path):
    process = gd.VPProcess()
    data = gaussian_data(64, seed=0, dtype=torch.float32)
    Trainer(small_model(), process, data, spec(steps=4, grad_clip=None), out_dir=tmp_path, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and records[-1]["grad_norm"] is None


def test_trainer_rejects_bad_data_before_training():
    process = gd.VPProcess()
    model = small_model()
    data = gaussian_data(64, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="NaN"):
        Trainer(model, process, torch.cat([data, torch.full((1, 2), float("nan"))]), spec(), progress=False)
    with pytest.raises(ValueError, match="do not fit"):
        Trainer(model, process, torch.zeros(64, 3), spec(), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(model, process, data[:10], spec(batch_size=32), progress=False)
    with pytest.raises(ValueError, match="dtype"):
        Trainer(model, process, data.double(), spec(), progress=False)
    with pytest.raises(ValueError, match="floating"):
        Trainer(model, process, data.long(), spec(), progress=False)
    with pytest.raises(ValueError, match="event"):
        Trainer(model, process, torch.zeros(64), spec(), progress=False)
    with pytest.raises(ValueError, match="LinearGaussianProcess"):
        Trainer(model, _NonLinearProcess(), data, spec(), progress=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(nn.Identity(), process, data, spec(), progress=False)


@pytest.mark.parametrize(
    "field,value",
    [("lr", 0.0), ("steps", 0), ("batch_size", 0), ("ema_decay", 1.5), ("grad_clip", -1.0), ("weighting", "l2"), ("eps", -1)],
)
def test_training_spec_validates_ranges(field, value):
    with pytest.raises(ValidationError, match=field):
        TrainingSpec(**{field: value})
    assert TrainingSpec(grad_clip=None).grad_clip is None


def held_out_dsm(process, data, seed=7):
    """A validation: the DSM loss on held-out points with the same times and noise at every call."""

    def validation(model):
        return float(dsm_loss(model, process, data, generator=torch.Generator().manual_seed(seed), weighting="sigma2"))

    return validation


def test_validation_runs_at_checkpoints_keeps_the_best_weights_and_resumes_bitwise(tmp_path, monkeypatch):
    process = gd.VPProcess()
    data = gaussian_data(200, seed=0, dtype=torch.float32)
    validation = held_out_dsm(process, gaussian_data(64, seed=9, dtype=torch.float32))
    plain = Trainer(small_model(), process, data, spec(), progress=False)
    plain.fit()
    straight = Trainer(small_model(), process, data, spec(), progress=False, validation=validation)
    straight.fit()
    # validation draws from its own generator: the training steps are those of a run without it
    assert_bitwise_equal(plain, straight)
    # one that draws from the global generator does not move the training's draws either
    noisy = Trainer(small_model(), process, data, spec(), progress=False, validation=lambda model: float(torch.rand(())))
    noisy.fit()
    assert_bitwise_equal(plain, noisy)
    assert [s for s, _ in straight.val_history] == [5, 10, 15, 20, 24]
    step, best = straight.best_validation
    assert best == min(v for _, v in straight.val_history)
    # the kept weights are the EMA weights of that step: validating them again gives the same value
    assert validation(straight.best_model()) == best
    if step != 24:
        assert validation(straight.ema_model) != best

    crash_at_step(
        monkeypatch, Trainer(small_model(), process, data, spec(), out_dir=tmp_path, progress=False, validation=validation), 18
    )
    resumed = Trainer(small_model(seed=2), process, data, spec(), out_dir=tmp_path, progress=False, validation=validation)
    resumed.fit()
    assert_bitwise_equal(straight, resumed)
    assert resumed.val_history == straight.val_history
    for p, q in zip(resumed.best_model().parameters(), straight.best_model().parameters(), strict=True):
        assert torch.equal(p, q)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    # joined to the loss line where a checkpoint step is logged (20, 24), a line of its own otherwise
    assert [(r["step"], r.get("val_loss")) for r in records if "val_loss" in r] == straight.val_history
    assert {r["step"]: set(r) for r in records}[5] == {"step", "val_loss"}
    assert "loss" in {r["step"]: r for r in records}[20]


def test_validation_is_checked():
    process = gd.VPProcess()
    data = gaussian_data(100, seed=0, dtype=torch.float32)
    with pytest.raises(TypeError, match="validation"):
        Trainer(small_model(), process, data, spec(), progress=False, validation=0.5)
    unvalidated = Trainer(small_model(), process, data, spec(steps=3), progress=False)
    unvalidated.fit()
    assert unvalidated.best_validation is None
    with pytest.raises(ValueError, match="validation"):
        unvalidated.best_model()
    broken = Trainer(small_model(), process, data, spec(steps=5), progress=False, validation=lambda model: float("nan"))
    with pytest.raises(FloatingPointError, match="validation gave nan at step 5"):
        broken.fit()
