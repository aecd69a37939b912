"""Function-space DSM training, generated function datasets and the gp-1d / vector-field-2d experiments."""

from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.data.functions import SCALAR_FUNCTIONS, data_kernel, sample_functions, sample_vector_fields
from geodiffusion.experiments import Experiment
from geodiffusion.experiments.gp import gp_conditional_log_likelihood
from geodiffusion.models import BiDimensionalAttention
from geodiffusion.samplers.conditional import conditional_log_likelihood, marginal_log_likelihood
from geodiffusion.samplers.ode import ODEOptions
from geodiffusion.testing import GPScore
from geodiffusion.training.functions import FunctionTrainer, function_dsm_loss


def _process(parametrisation: str):
    kernel = {
        "kind": "kernel_sum",
        "kernels": [{"kind": "squared_exponential", "lengthscale": 0.7}, {"kind": "white_noise", "variance": 0.1}],
    }
    return gd.build({"kind": "ou_gp", "kernel": kernel, "parametrisation": parametrisation})


@pytest.mark.parametrize("parametrisation", ["plain", "kernel_preconditioned", "st_preconditioned"])
def test_dsm_loss_of_the_exact_score_equals_the_closed_form_minimum(parametrisation):
    r"""With target :math:`-A\xi`, the minimum is
    :math:`\lambda\,\mathrm{tr}(AA^\top - \sigma^2 A L^\top\Sigma_t^{-1}LA^\top)/(nd)`."""
    process = _process(parametrisation)
    data = gd.build({"kind": "matern52", "lengthscale": 0.4})  # data are not the limiting GP: the score varies with t
    oracle = GPScore(process, kernel=data)
    gen = torch.Generator().manual_seed(0)
    n, batch, t0 = 6, 4000, 0.3
    x = torch.linspace(-1.5, 1.5, n, dtype=torch.float64).reshape(1, n, 1)
    k_data = oracle._data_gram(x[0])
    y0 = (torch.linalg.cholesky(k_data) @ torch.randn(batch, n, 1, generator=gen, dtype=torch.float64)).reshape(batch, n, 1)
    t = torch.full((batch,), t0, dtype=torch.float64)
    xs = x.expand(batch, n, 1)
    losses = function_dsm_loss(oracle, process, xs, y0, t=t, generator=gen, reduce=False)
    factor = process.factor(x[0])
    sigma, a = process.std(torch.tensor(t0, dtype=torch.float64)), process.mean_scale(torch.tensor(t0, dtype=torch.float64))
    big_l, k = factor.cholesky, factor.gram
    cov_t = a**2 * k_data + sigma**2 * k
    A = {
        "plain": torch.linalg.inv(big_l).T / sigma,
        "kernel_preconditioned": big_l / sigma,
        "st_preconditioned": torch.eye(n, dtype=torch.float64),
    }[parametrisation]
    residual = A @ A.T - sigma**2 * A @ big_l.T @ torch.linalg.solve(cov_t, big_l @ A.T)
    weight = 1.0 if parametrisation == "st_preconditioned" else float(sigma**2)
    expected = weight * torch.trace(residual) / n
    z = (losses.mean() - expected) / (losses.std() / math.sqrt(batch))
    assert abs(float(z)) < 4.0, (float(losses.mean()), float(expected))
    # a scaled score on the same draws: the excess 0.04 E|o|^2 is the paired difference's mean
    same = function_dsm_loss(oracle, process, xs, y0, t=t, generator=torch.Generator().manual_seed(5), reduce=False)
    scaled = lambda t, y, inputs: 1.2 * oracle(t, y, inputs=inputs)  # noqa: E731
    worse = function_dsm_loss(scaled, process, xs, y0, t=t, generator=torch.Generator().manual_seed(5), reduce=False)
    excess = worse - same
    assert float(excess.mean()) > 5 * float(excess.std() / math.sqrt(batch))


@pytest.mark.parametrize("parametrisation", ["plain", "kernel_preconditioned", "st_preconditioned"])
def test_antithetic_dsm_pairs_xi_with_minus_xi_and_cuts_the_small_time_gradient_noise(parametrisation):
    process = _process(parametrisation)
    data = gd.build({"kind": "matern52", "lengthscale": 0.4})
    oracle = GPScore(process, kernel=data)
    gen = torch.Generator().manual_seed(0)
    batch, n = 3, 5
    x = torch.rand(batch, n, 1, generator=gen, dtype=torch.float64) * 3 - 1.5
    y0 = torch.randn(batch, n, 1, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.7], dtype=torch.float64)
    # the pair: the first half is plain DSM's draw, the second its mirror image about mu_t with the negated target
    plain = function_dsm_loss(oracle, process, x, y0, t=t, generator=torch.Generator().manual_seed(1), reduce=False)
    paired = function_dsm_loss(
        oracle, process, x, y0, t=t, generator=torch.Generator().manual_seed(1), reduce=False, antithetic=True
    )
    y_t, target = process.denoising_pair(y0, t, inputs=x, generator=torch.Generator().manual_seed(1))
    mirror = 2 * process.marginal(y0, t, inputs=x).mean - y_t
    weight = 1.0 if parametrisation == "st_preconditioned" else process.std(t) ** 2
    mirrored = weight * ((oracle(t, mirror, inputs=x) + target) ** 2).flatten(1).mean(-1)
    torch.testing.assert_close(paired, 0.5 * (plain + mirrored), atol=1e-12, rtol=1e-12)
    # the gradient in a scale theta of a model o = theta * o_exact, over repeated draws at a small time: the pair's
    # O(1/sigma_t) noise term is odd in xi and cancels, so the spread shrinks by far more than sqrt(2)
    ts = torch.full((batch,), 0.005, dtype=torch.float64)

    def gradient(seed, antithetic):
        theta = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
        scaled = lambda t, y, inputs: theta * oracle(t, y, inputs=inputs)  # noqa: E731
        loss = function_dsm_loss(
            scaled, process, x, y0, t=ts, generator=torch.Generator().manual_seed(seed), antithetic=antithetic
        )
        return float(torch.autograd.grad(loss, theta)[0])

    spread = {a: torch.tensor([gradient(k, a) for k in range(64)]).std() for a in (False, True)}
    assert spread[True] < 0.2 * spread[False], spread


@pytest.mark.parametrize("antithetic", [False, True])
@pytest.mark.parametrize("parametrisation", ["plain", "kernel_preconditioned", "st_preconditioned"])
def test_kernel_metric_dsm_measures_the_score_error_in_the_k_norm(parametrisation, antithetic):
    """metric="kernel": lambda(t) d^T M d / (Nd) with d = o_theta - target and M = K^-1 (K-preconditioned), K (plain)
    or I (st-preconditioned): the score error's K-norm, whatever the output stands for; per-function inputs."""
    process = _process(parametrisation)
    oracle = GPScore(process, kernel=gd.build({"kind": "matern52", "lengthscale": 0.4}))
    gen = torch.Generator().manual_seed(0)
    batch, n = 3, 5
    x = torch.rand(batch, n, 1, generator=gen, dtype=torch.float64) * 3 - 1.5
    y0 = torch.randn(batch, n, 1, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.7], dtype=torch.float64)
    bump = torch.randn(batch, n, 1, generator=gen, dtype=torch.float64)
    model = lambda t, y, inputs: oracle(t, y, inputs=inputs) + bump.repeat(y.shape[0] // batch, 1, 1)  # noqa: E731
    kwargs = {"t": t, "reduce": False, "antithetic": antithetic}
    got = function_dsm_loss(model, process, x, y0, generator=torch.Generator().manual_seed(1), metric="kernel", **kwargs)
    y_t, target = process.denoising_pair(y0, t, inputs=x, generator=torch.Generator().manual_seed(1))
    gram = process.factor(x).gram
    metric = {
        "plain": gram,
        "kernel_preconditioned": torch.linalg.inv(gram),
        "st_preconditioned": torch.eye(n, dtype=torch.float64).expand(batch, n, n),
    }[parametrisation]
    weight = 1.0 if parametrisation == "st_preconditioned" else process.std(t) ** 2

    def quadratic(y, tgt):
        d = model(t, y, inputs=x) - tgt
        return weight * (d.mT @ metric @ d).reshape(batch) / n

    expected = quadratic(y_t, target)
    if antithetic:
        expected = 0.5 * (expected + quadratic(2 * process.marginal(y0, t, inputs=x).mean - y_t, -target))
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)
    euclidean = function_dsm_loss(model, process, x, y0, generator=torch.Generator().manual_seed(1), **kwargs)
    if parametrisation == "st_preconditioned":
        torch.testing.assert_close(got, euclidean, atol=1e-12, rtol=0)
    else:
        assert (got - euclidean).abs().max() > 1e-3
    with pytest.raises(ValueError, match="metric: expected 'euclidean' or 'kernel'"):
        function_dsm_loss(model, process, x, y0, metric="k", **kwargs)


def test_dsm_loss_takes_one_shared_time_and_rejects_a_wrong_number_of_times():
    process = _process("kernel_preconditioned")
    oracle = GPScore(process, kernel=gd.build({"kind": "matern52", "lengthscale": 0.4}))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 5, 1, generator=gen, dtype=torch.float64)
    y0 = torch.randn(4, 5, 1, generator=gen, dtype=torch.float64)
    for antithetic in (False, True):
        per_function = function_dsm_loss(
            oracle,
            process,
            x,
            y0,
            t=torch.full((4,), 0.3, dtype=torch.float64),
            generator=torch.Generator().manual_seed(1),
            antithetic=antithetic,
            reduce=False,
        )
        for shared in (0.3, torch.tensor(0.3, dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)):
            loss = function_dsm_loss(
                oracle,
                process,
                x,
                y0,
                t=shared,
                generator=torch.Generator().manual_seed(1),
                antithetic=antithetic,
                reduce=False,
            )
            torch.testing.assert_close(loss, per_function, atol=0, rtol=0)
    with pytest.raises(ValueError, match="t: expected one time or one per function"):
        function_dsm_loss(oracle, process, x, y0, t=torch.full((3,), 0.3))


def test_training_a_tiny_network_decreases_the_loss_and_resumes_bit_for_bit(tmp_path):
    process = _process("kernel_preconditioned")
    gen = torch.Generator().manual_seed(0)
    x, y = sample_functions("se", 64, 12, generator=gen)

    def trainer(out, steps):
        torch.manual_seed(0)
        model = BiDimensionalAttention(hidden=16, heads=2, layers=2)
        spec = {"steps": steps, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 20, "min_points": 4, "seed": 3}
        return FunctionTrainer(model, process, x, y, spec, out)

    full = trainer(tmp_path / "full", 60)
    history = full.fit()
    assert sum(history[-15:]) / 15 < 0.8 * sum(history[:15]) / 15
    trainer(tmp_path / "cut", 20).fit()
    resumed = trainer(tmp_path / "cut", 60)
    resumed.fit()
    for p, q in zip(full.ema_model.parameters(), resumed.ema_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert resumed.history == history
    with pytest.raises(ValueError, match="batch_size"):
        FunctionTrainer(BiDimensionalAttention(), process, x, y, {"batch_size": 65})


def test_generated_datasets_are_seeded_and_gp_families_have_their_kernels():
    for name in SCALAR_FUNCTIONS:
        a = sample_functions(name, 3, 7, generator=torch.Generator().manual_seed(1))
        b = sample_functions(name, 3, 7, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].shape == (3, 7, 1)
        assert (data_kernel(name) is None) == (name in ("sawtooth", "step"))
    x, y = sample_functions("step", 2, 50, low=2.0, high=6.0, noise=0.0, generator=torch.Generator().manual_seed(0))
    assert x.min() >= 2.0 and x.max() <= 6.0 and set(y.abs().unique().tolist()) == {1.0}
    x, y = sample_vector_fields("curl_free", 2, 9, radius=2.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (2, 9, 2) and x.norm(dim=-1).max() <= 2.0
    with pytest.raises(ValueError, match="name"):
        sample_functions("nope", 1, 1)


def test_probability_flow_conditional_likelihood_of_the_exact_score_matches_the_exact_gp():
    process = _process("kernel_preconditioned")
    data = data_kernel("se", 0.05)
    gen = torch.Generator().manual_seed(2)
    x, y = sample_functions("se", 4, 6, generator=gen, dtype=torch.float64)
    xc, yc, xt, yt = x[:, :3], y[:, :3], x[:, 3:], y[:, 3:]
    exact = gp_conditional_log_likelihood(data, xc, yc, xt, yt)
    mean, cov = GPScore(process, kernel=data).posterior(xc[0], yc[0], xt[0])
    reference = torch.distributions.MultivariateNormal(mean, cov).log_prob(yt[0].flatten())
    assert float((exact[0] - reference).abs()) < 1e-3  # GPScore adds the process's jitter 1e-6 to the data Gram
    flow = conditional_log_likelihood(
        GPScore(process, kernel=data), process, yt, xt, yc, xc, options=ODEOptions(method="rk4", steps=40)
    )
    assert float((flow - exact).abs().max()) / 3 < 0.05  # nats per target point


TINY_GP = {
    "datasets": ["se", "step"],
    "n_train": 16,
    "n_points": 8,
    "n_test": 2,
    "n_context": 2,
    "n_target": 2,
    "model": {"hidden": 8, "heads": 2, "layers": 1},
    "baseline": {"max_points": 8, "hidden": 16, "depth": 1},
    "training": {"steps": 6, "batch_size": 8, "checkpoint_every": 6, "log_every": 3, "min_points": 2},
    "likelihood": {"ode": {"steps": 2}},
    "sampler": {"steps": 4},
    "n_plot_samples": 2,
    "throughput_steps": 2,
    "throughput_batch": 2,
}


def test_tiny_gp_1d_run_reports_model_baseline_and_exact_gp_likelihoods(tmp_path, monkeypatch, capsys):
    cls = gd.registry(Experiment)["gp-1d"]
    spec = cls.resolve_spec(TINY_GP, quick=True)
    metrics = cls(spec).execute(tmp_path, progress=False)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for split in ("interpolation", "generalisation"):
        for key in ("model_ll", "baseline_ll"):
            assert math.isfinite(metrics[f"se/{split}/{key}"]) and math.isfinite(metrics[f"step/{split}/{key}"])
            assert metrics[f"se/{split}/{key.replace('_ll', '_diverged')}"] == 0
        assert metrics[f"se/{split}/gap"] == pytest.approx(metrics[f"se/{split}/gp_ll"] - metrics[f"se/{split}/model_ll"])
        assert f"step/{split}/gp_ll" not in metrics
    assert metrics["functions_per_second"] > 0
    for name in ("se_posterior.png", "step_posterior.png", "se/model/checkpoints/last.pt", "step/baseline/train_log.jsonl"):
        assert (tmp_path / name).is_file(), name
    # the diagnostics script reads the run back and reports the network's likelihood with its diverged count
    diagnostics = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "gp_score_diagnostics.py"))
    threads = torch.get_num_threads()  # the script pins one thread
    diagnostics["main"](["--run", str(tmp_path), "--functions", "4", "--draws", "1", "--no-flow", "--likelihood"])
    torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert f"interpolation log-likelihood of the EMA network: {metrics['se/interpolation/model_ll']:.4f}" in printed
    assert "0 of 2 flows diverged" in printed
    # hybrids split at t = 0: "exact below 0" is the network everywhere, and the reverse the exact score everywhere
    diagnostics["main"](["--run", str(tmp_path), "--functions", "4", "--draws", "1", "--split-at", "0"])
    torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert f"exact for t < 0, network above: {metrics['se/interpolation/model_ll']:.4f}" in printed
    experiment = cls(spec)
    process = gd.build(spec.process, gd.Process)
    x, y = experiment.test_functions("se", "interpolation")
    n_c = spec.n_context
    oracle = GPScore(process, kernel=data_kernel("se", spec.noise))
    exact = experiment._conditional_ll(oracle, process, x[:, :n_c], y[:, :n_c], x[:, n_c:], y[:, n_c:], "se", "interpolation")
    assert f"network for t < 0, exact above: {exact['ll']:.4f}" in printed
    # ... and the posterior plot is redrawn with another sampler beside the run's own
    replot = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "gp_posterior_plot.py"))
    assert replot["main"](["--run", str(tmp_path), "--dataset", "step", "--sampler", '{"steps": 3}']).is_file()
    capsys.readouterr()
    with pytest.raises(ValueError, match="dataset: expected one of the run's datasets"):
        replot["main"](["--run", str(tmp_path), "--dataset", "matern52"])
    with pytest.raises(ValueError, match="split: expected one of"):
        experiment.test_functions("se", "extrapolation")
    with pytest.raises(ValueError, match="which: expected 'model' or 'baseline'"):
        experiment.load_network(tmp_path, "se", "ema")
    assert not experiment.load_network(tmp_path, "se", "baseline").training
    # the default network is translation invariant: the trained score ignores a shift of the inputs
    network = experiment.load_network(tmp_path, "se")
    x, y = experiment.test_functions("se", "interpolation")
    t = torch.full((x.shape[0],), 0.05)
    with torch.no_grad():
        torch.testing.assert_close(network(t, y, inputs=x + 4.0), network(t, y, inputs=x), atol=1e-5, rtol=1e-5)
    # an interrupted run resumed in the same folder reads each finished dataset's likelihoods back
    (tmp_path / "metrics.json").unlink()
    monkeypatch.setattr(cls, "_function_lls", lambda *args: pytest.fail("recomputed a finished dataset"))
    resumed = cls(spec).execute(tmp_path, progress=False)
    assert {k: v for k, v in resumed.items() if k != "functions_per_second"} == {
        k: v for k, v in metrics.items() if k != "functions_per_second"
    }
    assert (
        json.loads((tmp_path / "se" / "metrics.json").read_text())["se/interpolation/model_ll"]
        == metrics["se/interpolation/model_ll"]
    )


def test_an_adaptive_flow_that_blows_up_for_one_function_leaves_the_others_finite_with_shared_inputs():
    """Output -y - 0.1 y^3 (K-preconditioned) gives the flow dy/dt = 0.05 beta y^3 at every point: from y = 3 it blows
    up at B(t) = 1.1 < B(T), from y = 0.1 it does not. Inputs shared as [n, m] or [1, n, m] are split alike."""
    process = gd.build({"kind": "ou_gp", "kernel": {"kind": "squared_exponential", "lengthscale": 0.5}})
    x = torch.linspace(-1, 1, 4, dtype=torch.float64).reshape(4, 1)
    y = torch.full((3, 4, 1), 0.1, dtype=torch.float64)
    y[1] = 3.0
    adaptive = ODEOptions(method="dopri5", rtol=1e-6, atol=1e-6)
    cubic = lambda t, values, inputs: -values - 0.1 * values**3  # noqa: E731
    lls = []
    for inputs in (x, x[None], x.expand(3, 4, 1)):
        with pytest.warns(RuntimeWarning, match="1 of 3 functions blew up"):
            lls.append(marginal_log_likelihood(cubic, process, y, inputs, options=adaptive))
    for ll in lls:
        assert not math.isfinite(float(ll[1])) and bool(torch.isfinite(ll[[0, 2]]).all())
        torch.testing.assert_close(ll[[0, 2]], lls[0][[0, 2]])


def test_gp_1d_gap_compares_the_exact_gp_and_the_model_on_the_same_functions(tmp_path, monkeypatch):
    """With the first test function's flow diverged, the gap leaves that function out of the exact GP's side too."""
    cls = gd.registry(Experiment)["gp-1d"]
    spec = cls.resolve_spec({**TINY_GP, "datasets": ["se"]}, quick=True)
    n_target = spec.n_target
    monkeypatch.setattr(cls, "_function_lls", lambda *args: torch.tensor([math.nan, -1.0], dtype=torch.float64))
    monkeypatch.setattr(gd.experiments.gp, "gp_conditional_log_likelihood", lambda *args: torch.tensor([10.0, 4.0]) * n_target)
    metrics = cls(spec).execute(tmp_path, progress=False)
    for split in ("interpolation", "generalisation"):
        assert metrics[f"se/{split}/model_ll"] == -1.0 and metrics[f"se/{split}/model_diverged"] == 1
        assert metrics[f"se/{split}/gp_ll"] == pytest.approx(7.0)
        assert metrics[f"se/{split}/gap"] == pytest.approx(5.0)  # 4 - (-1), not 7 - (-1)


def test_a_probability_flow_that_blows_up_is_counted_as_diverged_and_left_out_of_the_mean():
    """The stationary score (output -y: the data are the limit GP) gives log N(y; 0, K) exactly; a cubic term on the
    first function makes its flow dy/dt = 5 beta (y^3 + 1) blow up before t = T, which must be counted, not averaged as NaN."""
    cls = gd.registry(Experiment)["gp-1d"]
    experiment = cls(cls.resolve_spec(TINY_GP, quick=True))
    process = gd.build(experiment.spec.process)
    assert process.spec.parametrisation == "kernel_preconditioned"
    x, y = sample_functions("se", 3, 6, generator=torch.Generator().manual_seed(0))
    xc, yc, xt, yt = x[:, :3], y[:, :3], x[:, 3:], y[:, 3:]

    def exploding(t, values, inputs):
        # the first function, known by its first context input (the joint's inputs start with the context's)
        first = ((inputs[:, 0, 0] - xc[0, 0, 0].to(inputs.dtype)).abs() < 1e-6).to(values.dtype)[:, None, None]
        return -values - first * (10 * values**3 + 10)

    with pytest.warns(RuntimeWarning, match="1 of 3 functions blew up"):
        result = experiment._conditional_ll(exploding, process, xc, yc, xt, yt, "se", "probe")
    stationary = experiment._conditional_ll(lambda t, values, inputs: -values, process, xc, yc, xt, yt, "se", "probe")
    assert result["diverged"] == 1 and stationary["diverged"] == 0
    exact = gp_conditional_log_likelihood(process.kernel, xc.double(), yc.double(), xt.double(), yt.double()) / 3
    assert stationary["ll"] == pytest.approx(float(exact.mean()), abs=1e-3)
    assert result["ll"] == pytest.approx(float(exact[1:].mean()), abs=1e-3)
    # an adaptive solver stops the whole batch on the diverging function ("underflow in dt"): it is singled out
    adaptive = ODEOptions(method="dopri5", rtol=1e-6, atol=1e-6)
    with pytest.warns(RuntimeWarning, match="blew up"):
        ll = conditional_log_likelihood(exploding, process, yt.double(), xt.double(), yc.double(), xc.double(), options=adaptive)
    assert not math.isfinite(float(ll[0]))
    torch.testing.assert_close(ll[1:] / 3, exact[1:], atol=1e-4, rtol=0)
    # the plots draw conditional samples: a sampler that diverges is reported in the panel, not raised after the metrics
    with pytest.warns(RuntimeWarning, match="non-finite at t = ") as record:
        message = experiment._conditional_samples(
            lambda t, values, inputs: 1e3 * values**3, process, xt[0], xc[0], yc[0], torch.Generator().manual_seed(0)
        )
    assert message.startswith("ReplacementConditional: the samples became non-finite at t = ")
    hint = str(record[-1].message)  # the panel shows the first clause, the warning the whole message
    assert "raise steps" in hint and "psi" not in hint  # the replacement sampler has no Langevin step


def test_tiny_vector_field_run_writes_the_data_efficiency_curve_and_resumes_without_recomputing(tmp_path, monkeypatch):
    cls = gd.registry(Experiment)["vector-field-2d"]
    tiny = {
        "datasets": ["divergence_free"],
        "train_sizes": [8, 4],
        "n_points": 5,
        "n_test": 2,
        "n_context": 2,
        "n_target": 2,
        "model": {"hidden": 8, "channels": 2, "layers": 1, "rbf": 3},
        "baseline": {"hidden": 8, "heads": 2, "layers": 1},
        "training": {"steps": 4, "batch_size": 4, "checkpoint_every": 4, "min_points": 3},
        "likelihood": {"ode": {"steps": 2}},
        "sampler": {"steps": 4},
        "n_plot_samples": 2,
        "throughput_steps": 2,
        "throughput_batch": 2,
    }
    metrics = cls(cls.resolve_spec(tiny, quick=True)).execute(tmp_path, progress=False)
    for n in (4, 8):
        assert math.isfinite(metrics[f"divergence_free/n{n}/model_ll"]) and math.isfinite(
            metrics[f"divergence_free/n{n}/baseline_ll"]
        )
    assert math.isfinite(metrics["divergence_free/gp_ll"]) and metrics["divergence_free/n4/model_diverged"] == 0
    assert (tmp_path / "data_efficiency.png").is_file() and (tmp_path / "divergence_free_fields.png").is_file()
    # an interrupted run resumed in the same folder reads each finished stage's likelihood back
    (tmp_path / "metrics.json").unlink()
    monkeypatch.setattr(cls, "_conditional_ll", lambda *args: pytest.fail("recomputed a finished stage"))
    resumed = cls(cls.resolve_spec(tiny, quick=True)).execute(tmp_path, progress=False)
    for key in ("divergence_free/n4/model_ll", "divergence_free/n8/baseline_ll", "divergence_free/gp_ll"):
        assert resumed[key] == metrics[key]


def test_experiment_specs_reject_networks_of_the_wrong_shape_and_oversized_batches():
    with pytest.raises(ValidationError, match="model"):
        gd.registry(Experiment)["gp-1d"].resolve_spec({"model": {"input_dim": 2}})
    with pytest.raises(ValidationError, match="max_points"):
        gd.registry(Experiment)["gp-1d"].resolve_spec({"n_points": 80})
    with pytest.raises(ValidationError, match="batch_size"):
        gd.registry(Experiment)["vector-field-2d"].resolve_spec({"train_sizes": [8]})
    residual = {"kind": "gp_residual", "network": {"kind": "bidim_attention"}, "process": {"kind": "ou_gp"}}
    with pytest.raises(ValidationError, match="model.process"):
        gd.registry(Experiment)["gp-1d"].resolve_spec({"model": residual})
    own = gd.registry(Experiment)["gp-1d"].resolve_spec({}).process.model_dump()
    assert gd.registry(Experiment)["gp-1d"].resolve_spec({"model": {**residual, "process": own}}).model.kind == "gp_residual"


def test_riemannian_function_dsm_of_the_exact_score_of_a_point_mass_is_zero_and_a_network_trains():
    """Data at one point per input: the transition score is the marginal score, so the exact loss is 0."""
    from geodiffusion.data.functions import sample_sphere_tracks
    from geodiffusion.processes import BrownianProcess
    from geodiffusion.training.functions import function_riemannian_dsm_loss

    process = BrownianProcess(manifold={"kind": "sphere", "dim": 2})
    gen = torch.Generator().manual_seed(0)
    x, y = sample_sphere_tracks(32, 5, generator=gen, dtype=torch.float64)
    y0 = y[:1].expand(32, 5, 3)

    def exact(t, v, inputs):
        return process.marginal(y0, t[:, None].expand(32, 5)).score(v)

    assert float(function_riemannian_dsm_loss(exact, process, x, y0, generator=gen)) < 1e-12
    with pytest.raises(ValueError, match="manifold"):
        function_riemannian_dsm_loss(exact, _process("plain"), x, y0)
    torch.manual_seed(0)
    model = gd.build(gd.registry(gd.ScoreModel)["tangent_function"].examples()[0]).double()
    history = FunctionTrainer(
        model, process, x[:, :4].contiguous(), y[:, :4].contiguous(), {"steps": 40, "batch_size": 8, "lr": 3e-3}
    ).fit()
    assert sum(history[-10:]) < sum(history[:10])
    with pytest.raises(ValueError, match="antithetic"):
        FunctionTrainer(model, process, x, y, {"steps": 4, "batch_size": 8, "antithetic": True})
    with pytest.raises(ValueError, match="metric: 'kernel'"):
        FunctionTrainer(model, process, x, y, {"steps": 4, "batch_size": 8, "metric": "kernel"})


def test_tiny_sphere_tracks_run_samples_on_the_sphere(tmp_path):
    cls = gd.registry(Experiment)["sphere-tracks"]
    tiny = {
        "n_train": 16,
        "n_points": 4,
        "n_samples": 8,
        "n_conditional": 2,
        "conditional_samples": 3,
        "model": {"network": {"hidden": 8, "heads": 2, "layers": 1}},
        "training": {"steps": 4, "batch_size": 8, "checkpoint_every": 4},
        "sampler": {"steps": 5},
        "conditional_sampler": {"steps": 4, "inner_steps": 2, "tau": None},
    }
    metrics = cls(cls.resolve_spec(tiny, quick=True)).execute(tmp_path, progress=False)
    assert metrics["max_off_sphere"] < 1e-5 and metrics["conditional_max_off_sphere"] < 1e-5
    assert metrics["data_plane_residual"] < 0.1 < metrics["prior_plane_residual"]  # noisy great circles vs uniform points
    # observed points 0 and 3 of 4: slerp between them is off by about the observation noise only
    assert metrics["slerp_error"] < 0.1 and math.isfinite(metrics["conditional_error"])
    conditional = torch.load(tmp_path / "conditional_samples.pt")
    assert conditional["samples"].shape == (2, 3, 2, 3) and conditional["targets"].tolist() == [1, 2]
    for name in ("tracks.png", "conditional.png", "model/checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    with pytest.raises(ValidationError, match="no point to predict"):
        cls.resolve_spec({"n_points": 2})
    with pytest.raises(ValidationError, match="n_conditional"):
        cls.resolve_spec({"n_samples": 4, "n_conditional": 8})


def test_sphere_tracks_slerp_baseline_is_exact_on_great_circles_and_frechet_mean_is_the_centre():
    from geodiffusion.data.functions import sample_sphere_tracks
    from geodiffusion.manifolds import Sphere

    cls = gd.registry(Experiment)["sphere-tracks"]
    sphere = Sphere(dim=2)
    gen = torch.Generator().manual_seed(0)
    x, y = sample_sphere_tracks(5, 10, noise=0.0, grid=True, generator=gen, dtype=torch.float64)
    observed = cls.observed_points(10, 3)
    assert observed == [0, 3, 6, 9]
    targets = [i for i in range(10) if i not in observed]
    # noiseless tracks run along great circles at constant speed: geodesic interpolation recovers them
    slerp = cls.slerp_interpolation(sphere, x, y, observed, targets)
    assert float(sphere.dist(slerp, y[:, targets]).max()) < 1e-10
    noisy = cls.slerp_interpolation(
        sphere, x, y + 0.05 * torch.randn(y.shape, generator=gen, dtype=torch.float64), [0, 9], targets
    )
    assert float(sphere.dist(noisy, y[:, targets]).max()) > 1e-3
    centre = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    ring = sphere.exp(
        centre.expand(6, 3),
        0.4 * torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0.6, 0.8, 0], [-0.6, -0.8, 0]]).double(),
    )
    mean = cls.frechet_mean(sphere, ring[None, :, None].expand(2, 6, 1, 3), dim=1)
    assert mean.shape == (2, 1, 3) and float(sphere.dist(mean, centre).max()) < 1e-10
    # an asymmetric cloud: the Frechet mean, unlike the normalised Euclidean mean, zeroes the mean of log_m y
    cloud = sphere.exp(centre.expand(4, 3), torch.tensor([[1.2, 0, 0], [0, 0.3, 0], [-0.2, 0, 0], [0, -0.1, 0]]).double())
    m = cls.frechet_mean(sphere, cloud, dim=0)
    assert float(sphere.log(m.expand(4, 3), cloud).mean(0).norm()) < 1e-10


def test_gp_1d_plots_with_a_langevin_step_per_dataset_and_validates_it():
    cls = gd.registry(Experiment)["gp-1d"]
    experiment = cls(cls.resolve_spec({}))
    assert experiment.plot_sampler("step").psi == 1.0 and experiment.plot_sampler("sawtooth").psi == 1.0
    assert experiment.plot_sampler("se").psi == 10.0 and experiment.spec.sampler.psi == 10.0
    assert experiment.plot_sampler("se").preconditioner == "conditional"
    custom = cls(cls.resolve_spec({"langevin_psi": {"se": 2.0, "step": 10.0}}))  # merged over the defaults
    assert custom.plot_sampler("se").psi == 2.0 and custom.plot_sampler("step").psi == 10.0
    assert custom.plot_sampler("matern52").psi == 10.0
    assert custom.plot_sampler("sawtooth").psi == 1.0
    # a sampler without a Langevin step is used as it is
    replacement = cls(cls.resolve_spec({}, quick=True))
    assert replacement.plot_sampler("step") == replacement.spec.sampler
    with pytest.raises(ValidationError, match="langevin_psi"):
        cls.resolve_spec({"langevin_psi": {"step": 0.0}})
    with pytest.raises(ValidationError, match="langevin_psi"):
        cls.resolve_spec({"langevin_psi": {"cosine": 1.0}})
