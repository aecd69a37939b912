"""Every benchmark in one command: throughput and memory, each method beside a baseline measured in the same run.

    python benchmarks/suite.py                  # full sizes, tables on stdout
    python benchmarks/suite.py --quick          # small sizes (a few minutes on a 2-core CPU)
    python benchmarks/suite.py --device cuda    # on a GPU: timings synchronise, memory is torch.cuda's peak
    python benchmarks/suite.py --write          # also replace the suite section of benchmarks/README.md

Sections (method / baseline):
  training  - optimiser steps per second of each experiment's default network through its own trainer:
              weight-tied C4 U-Net / plain U-Net (rotated-digits), EGNN / bi-dimensional attention
              (vector-field-2d), bi-dimensional attention / function MLP (gp-1d), Riemannian DSM with the exact
              S^2 heat-kernel score / the same MLP with Euclidean DSM on R^3 (earth-*).
  sampling  - functions of 100 points per second by a 100-step reverse SDE (gp-1d and vector-field-2d networks /
              their baselines, and exact GP draws by Cholesky); images per second of the equivariant-noise
              reverse SDE (WT and FA / plain U-Net); conformers per second of the projection-free sampler /
              RDKit ETKDG on packaged test molecules.
  heat      - S^n heat-kernel log_prob + score evaluations per second, the auto hybrid / the plain eigen expansion
              at equal accuracy; exact samples per second / the geodesic random walk whose KS statistic reaches
              the median KS of as many exact draws.
  memory    - peak memory of one training step (or kernel evaluation) against problem size: points per function
              (bi-dimensional attention, EGNN), atoms (edge score network on chain graphs), dimension n of S^n
              (heat kernel), image side (U-Net); the growth exponent is the least-squares slope of log memory on
              log size. On the CPU the peak comes from the profiler's memory timeline (allocations made during the
              step: activations, gradients, temporaries; parameters made before it are not counted).
Throughput does not depend on trained weights, so networks are freshly initialised (seeded); data are the
experiments' own generators or files.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import heat_kernels  # noqa: E402  (the sibling benchmark script: equal-accuracy search of the eigen expansion)

import geodiffusion as gd  # noqa: E402
from geodiffusion.conformers.graph import point_cloud_graph  # noqa: E402
from geodiffusion.data.conformers import load_conformers  # noqa: E402
from geodiffusion.data.earth import load_earth  # noqa: E402
from geodiffusion.data.functions import data_kernel, sample_functions, sample_vector_fields  # noqa: E402
from geodiffusion.experiments.conformers import ConformersQM9Experiment, etkdg_conformers, sample_graphs  # noqa: E402
from geodiffusion.experiments.earth import EarthVolcano  # noqa: E402
from geodiffusion.experiments.gp import GP1DExperiment, VectorField2DExperiment  # noqa: E402
from geodiffusion.experiments.images import RotatedDigitsExperiment  # noqa: E402
from geodiffusion.registry import build  # noqa: E402
from geodiffusion.training.functions import FunctionTrainer, function_dsm_loss  # noqa: E402
from geodiffusion.training.graph import distance_dsm_loss  # noqa: E402

README = HERE / "README.md"
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        print("\n" + self.header(), flush=True)

    def add(self, *cells) -> None:
        self.rows.append([c if isinstance(c, str) else f"{c:.3g}" for c in cells])
        print("| " + " | ".join(self.rows[-1]) + " |", flush=True)

    def header(self) -> str:
        return f"### {self.title}\n\n| " + " | ".join(self.columns) + " |\n|" + "---|" * len(self.columns)

    def markdown(self) -> str:
        return "\n".join([self.header(), *("| " + " | ".join(r) + " |" for r in self.rows)])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of ``fn()`` after one warm-up call."""
    fn()
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memory.raw.json"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated for CUDA snapshots; the CPU timeline has no successor
            prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return int(max((sum(s) for s in sizes), default=0))


def growth_exponent(sizes, values) -> float:
    """Least-squares slope of log(value) on log(size): memory grows like size^slope."""
    slope, _ = np.polyfit(np.log(np.asarray(sizes, dtype=float)), np.log(np.asarray(values, dtype=float)), 1)
    return float(slope)


def seeded(spec, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A score network built from ``spec`` with a fixed initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(spec, gd.ScoreModel).to(dtype)


# --- training -------------------------------------------------------------------------------------------


def steps_per_second(make_trainer: Callable[[int], object], warm: int, steps: int) -> float:
    """Optimiser steps per second of a trainer after ``warm`` steps (allocator and caches warm)."""
    trainer = make_trainer(warm)
    trainer.fit()
    trainer.spec = trainer.spec.model_copy(update={"steps": warm + steps})
    start = time.perf_counter()
    trainer.fit()
    synchronize(trainer.device)
    return steps / (time.perf_counter() - start)


def training(device: torch.device, quick: bool) -> Table:
    table = Table(
        "Training throughput (optimiser steps / s at each experiment's default batch)",
        ["experiment", "method", "steps/s", "baseline", "steps/s", "method / baseline"],
    )
    warm, steps = (2, 5) if quick else (5, 30)

    # rotated-digits: WT U-Net vs plain U-Net, noise-prediction DSM on the VP process
    s = RotatedDigitsExperiment.Spec()
    images = s.data.load(torch.float32)["train"]
    process = build(s.process, gd.Process)

    def image_trainer(net):
        def make(n):
            model = gd.NoisePredictor(net=net, process=s.process)
            spec = s.training.model_copy(update={"steps": n})
            return gd.Trainer(model, process, images, spec, device=device, progress=False)

        return make

    wt = steps_per_second(image_trainer(s.wt_model), warm, steps)
    plain = steps_per_second(image_trainer(s.model), warm, steps)
    table.add("rotated-digits", "WT C4 U-Net", wt, "U-Net", plain, wt / plain)

    # function experiments: the equivariant (or set) network vs the experiment's baseline network
    for experiment, data in (
        (VectorField2DExperiment, lambda sp: sample_vector_fields("curl_free", 512, sp.n_points, generator=_gen())),
        (GP1DExperiment, lambda sp: sample_functions("se", 512, sp.n_points, generator=_gen())),
    ):
        sp = experiment.Spec()
        x, y = data(sp)
        fprocess = build(sp.process, gd.Process)

        def function_trainer(net, sp=sp, x=x, y=y, fprocess=fprocess):
            def make(n):
                spec = sp.training.model_copy(update={"steps": n})
                return FunctionTrainer(seeded(net), fprocess, x, y, spec, device=device)

            return make

        a = steps_per_second(function_trainer(sp.model), warm, steps)
        b = steps_per_second(function_trainer(sp.baseline), warm, steps)
        table.add(experiment.kind, sp.model.kind, a, sp.baseline.kind, b, a / b)

    # earth: Riemannian DSM (exact heat-kernel score, tangent MLP) vs Euclidean DSM of the same MLP on R^3
    se = EarthVolcano.Spec()
    train, _, _ = load_earth("volcano", dtype=torch.float32)
    brownian = build(se.process, gd.Process)
    vp = gd.VPProcess(event_ndim=1)
    mlp = {"kind": "mlp", "dim": 3, "hidden": se.model.hidden, "depth": se.model.depth}

    def earth_trainer(net, proc):
        def make(n):
            spec = se.training.model_copy(update={"steps": n, "batch_size": min(se.training.batch_size, len(train))})
            return gd.Trainer(seeded(net), proc, train, spec, device=device, progress=False)

        return make

    a = steps_per_second(earth_trainer(se.model, brownian), warm, steps)
    b = steps_per_second(earth_trainer(mlp, vp), warm, steps)
    table.add("earth-volcano", "Riemannian DSM, S^2 heat kernel", a, "Euclidean DSM on R^3", b, a / b)
    return table


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- sampling -------------------------------------------------------------------------------------------


def _function_sampling(table: Table, experiment, device: torch.device, batch: int, steps: int) -> None:
    """Functions of 100 points per second: the reverse SDE of the experiment's network and of its baseline, and
    (1-d) exact GP draws by a Cholesky factor of the 100 x 100 Gram matrix."""
    sp = experiment.Spec()
    process = build(sp.process, gd.Process)
    one_d = experiment is GP1DExperiment
    if one_d:
        grid = torch.linspace(-2, 2, 100).unsqueeze(-1)
    else:
        grid = 3 * torch.rand(100, 2, generator=_gen())
    grid = grid.to(device)
    sampler = gd.ReplacementConditional(steps=steps)
    rates = {}
    for name in ("model", "baseline"):
        spec = getattr(sp, name).model_dump()
        if "max_points" in spec:  # the function MLP's input width: widen it to the 100 points
            spec["max_points"] = max(spec["max_points"], 100)
        net = seeded(spec).to(device)

        def draw(net=net):
            with torch.no_grad():
                sampler.sample(net, process, grid, n_samples=batch, generator=_gen())

        rates[name] = batch / best_time(draw, device, repeats=1)
    task = f"{experiment.kind}: functions of 100 points ({steps}-step SDE)"
    table.add(task, sp.model.kind, rates["model"], sp.baseline.kind, rates["baseline"], rates["model"] / rates["baseline"])
    if one_d:
        kernel = data_kernel("se", 0.05)

        def exact():
            gram = kernel.gram(grid.double())
            chol = torch.linalg.cholesky(gram)
            return chol @ torch.randn(100, batch, dtype=gram.dtype, generator=_gen()).to(device)

        gp = batch / best_time(exact, device)
        task = f"{experiment.kind}: functions of 100 points"
        table.add(task, sp.model.kind, rates["model"], "exact GP (Cholesky)", gp, rates["model"] / gp)


def sampling(device: torch.device, quick: bool) -> Table:
    table = Table(
        "Sampling throughput",
        ["task", "method", "per s", "baseline", "per s", "method / baseline"],
    )
    batch, steps = (8, 20) if quick else (64, 100)
    function_batch = 8 if quick else 16  # the EGNN on 100 points (10^4 edges per function) is slow on a CPU

    for experiment in (GP1DExperiment, VectorField2DExperiment):
        _function_sampling(table, experiment, device, function_batch, steps)

    # images: equivariant-noise reverse SDE with WT and FA against the plain U-Net
    s = RotatedDigitsExperiment.Spec()
    process = build(s.process, gd.Process)
    sampler = build({**s.sampler.model_dump(), "steps": steps}, gd.Sampler)
    group = build(s.group, gd.Group)
    nets = {
        "unet": gd.NoisePredictor(net=s.model, process=s.process).to(device),
        "wt": gd.NoisePredictor(net=s.wt_model, process=s.process).to(device),
    }
    nets["fa"] = gd.FrameAveraged.wrap(nets["unet"], group)
    shape = (batch, 1, s.data.size, s.data.size)
    rate = {}
    for name, net in nets.items():

        def draw(net=net):
            with torch.no_grad():
                sampler.sample(net, process, shape, generator=_gen(), device=device)

        rate[name] = batch / best_time(draw, device, repeats=1)
    for name, label in (("wt", "WT C4 U-Net"), ("fa", "FA over C4 (4 U-Net calls)")):
        task = f"rotated-digits: images ({steps}-step SDE)"
        table.add(task, label, rate[name], "U-Net", rate["unet"], rate[name] / rate["unet"])

    # conformers: projection-free sampler (100 steps) vs RDKit ETKDG, two conformers per reference conformer
    sc = ConformersQM9Experiment.Spec()
    test = load_conformers("test", limit=4 if quick else 16)
    counts = [sc.samples_per_reference * e.n_conformers for e in test]
    model = seeded(sc.model).to(device)
    dprocess = build(sc.process, gd.Process)
    csampler = build({**sc.sampler.model_dump(), "steps": steps}, gd.Sampler)
    graphs = [g for e, c in zip(test, counts, strict=True) for g in [e.graph()] * c]
    start = time.perf_counter()
    sample_graphs(csampler, model, dprocess, [g.to(device) for g in graphs], _gen(), torch.float32)
    synchronize(device)
    model_rate = len(graphs) / (time.perf_counter() - start)
    etkdg, seconds = etkdg_conformers(test, counts, seed=0)
    etkdg_rate = sum(x.shape[0] for x in etkdg) / seconds
    table.add(
        f"conformers-qm9: {len(test)} molecules ({steps}-step SDE)",
        "projection-free",
        model_rate,
        "RDKit ETKDG (1 core)",
        etkdg_rate,
        model_rate / etkdg_rate,
    )
    return table


# --- heat kernels ---------------------------------------------------------------------------------------


def heat(quick: bool) -> Table:
    table = Table(
        "S^n heat kernel (float64; 1024 points, 20000 draws; quick: 256 / 2000)",
        ["n", "t", "auto evals/s", "eigen evals/s (equal accuracy)", "auto / eigen"]
        + ["exact draws/s", "GRW draws/s (equal KS)", "exact / GRW"],
    )
    batch, draws = (256, 2000) if quick else (1024, 20000)
    cases = [(2, 1e-2), (15, 1.0)] if quick else [(2, 1e-3), (2, 1.0), (15, 1e-2), (15, 0.1), (127, 1e-3)]
    for n, t in cases:
        ev = heat_kernels.evaluation_record(n, t, batch)
        sm = heat_kernels.sampling_record(n, t, draws, 64 if quick else 256)
        bound = "" if sm["grw_found"] else " (GRW never reached it: bound)"
        table.add(
            str(n),
            f"{t:g}",
            batch / ev["auto_s"],
            batch / ev["eigen_s"],
            ev["eigen_s"] / ev["auto_s"],
            draws / sm["exact_s"],
            draws / sm["grw_s"],
            f"{sm['grw_s'] / sm['exact_s']:.3g}{bound}",
        )
    return table


# --- memory ---------------------------------------------------------------------------------------------


def _function_step(net, fprocess, x, y):
    def step():
        net.zero_grad(set_to_none=True)
        function_dsm_loss(net, fprocess, x, y, generator=_gen()).backward()

    return step


def memory(device: torch.device, quick: bool) -> Table:
    table = Table("Peak memory against problem size", ["workload", "sizes", "peak MiB", "growth exponent"])

    def record(label: str, sizes, make: Callable[[int], Callable[[], object]]) -> None:
        peaks = []
        for size in sizes:
            fn = make(size)
            fn()  # warm-up: lazily built buffers and caches are not the step's own memory
            peaks.append(peak_memory(fn, device))
        table.add(
            label,
            ", ".join(map(str, sizes)),
            ", ".join(f"{p / 2**20:.3g}" for p in peaks),
            f"{growth_exponent(sizes, peaks):.2f}",
        )

    # the EGNN is fully connected (N^2 messages): its sizes stop earlier
    for experiment, sample, n_points in (
        (
            GP1DExperiment,
            lambda n: sample_functions("se", 2, n, generator=_gen()),
            [32, 64, 128] if quick else [64, 128, 256, 512, 1024],
        ),
        (
            VectorField2DExperiment,
            lambda n: sample_vector_fields("curl_free", 2, n, generator=_gen()),
            [32, 64, 128] if quick else [32, 64, 128, 256],
        ),
    ):
        sp = experiment.Spec()
        fprocess = build(sp.process, gd.Process)
        net = seeded(sp.model).to(device)

        def make(n, sample=sample, net=net, fprocess=fprocess):
            x, y = sample(n)
            return _function_step(net, fprocess, x.to(device), y.to(device))

        record(f"{sp.model.kind} training step, 2 functions; size = points per function", n_points, make)

    sc = ConformersQM9Experiment.Spec()
    edge_net = seeded(sc.model).to(device)
    dprocess = build(sc.process, gd.Process)
    atoms = [32, 64, 128] if quick else [32, 64, 128, 256, 512]

    def chain(n):
        steps = torch.nn.functional.normalize(torch.randn(n, 3, generator=_gen(), dtype=torch.float64), dim=-1) * 1.5
        pos = steps.cumsum(0)
        bonds = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
        graph = point_cloud_graph(pos.float(), bonds)
        batch = Batch.from_data_list([graph]).to(device)

        def step():
            edge_net.zero_grad(set_to_none=True)
            distance_dsm_loss(edge_net, dprocess, batch, generator=_gen()).backward()

        return step

    record("edge_score training step, one chain molecule; size = atoms", atoms, chain)

    dims = [15, 31, 63] if quick else [15, 31, 63, 127, 255]

    def kernel_eval(n):
        sphere = gd.Sphere(dim=n)
        kernel = sphere.heat_kernel()
        x0 = sphere.random_point(1024, _gen(), dtype=torch.float64).to(device)
        x = kernel.sample(x0, 0.01, _gen())
        return lambda: (kernel.log_prob(x0, x, 0.01), kernel.score(x0, x, 0.01))

    record("S^n heat kernel log_prob + score, 1024 points, t = 0.01; size = n", dims, kernel_eval)

    s = RotatedDigitsExperiment.Spec()
    sides = [16, 32] if quick else [16, 32, 64]

    def unet_step(side):
        net = gd.NoisePredictor(net={**s.model.model_dump(), "image_size": side}, process=s.process).to(device)
        x = torch.randn(16, 1, side, side, generator=_gen()).to(device)
        vp = build(s.process, gd.Process)

        def step():
            net.zero_grad(set_to_none=True)
            gd.dsm_loss(net, vp, x, generator=_gen()).backward()

        return step

    record("U-Net training step, batch 16; size = image side", sides, unet_step)
    return table


# --- driver ---------------------------------------------------------------------------------------------


def provenance(device: torch.device, command: str) -> str:
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE, capture_output=True, text=True)
        commit += "+dirty" if dirty.stdout.strip() else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    return (
        f"Device: {name}; torch {torch.__version__}, {torch.get_num_threads()} threads; commit {commit or 'unknown'}; "
        f"{datetime.date.today().isoformat()}.\nCommand: `{command}`"
    )


def write_readme(text: str) -> None:
    readme = README.read_text(encoding="utf-8")
    if BEGIN in readme and END in readme:
        head, rest = readme.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        readme = head + BEGIN + "\n" + text + "\n" + END + tail
    else:
        readme = readme.rstrip("\n") + f"\n\n## Suite (`python benchmarks/suite.py`)\n\n{BEGIN}\n{text}\n{END}\n"
    README.write_text(readme, encoding="utf-8")


SECTIONS = ("training", "sampling", "heat", "memory")
RUNNERS = {"training": training, "sampling": sampling, "memory": memory}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run these sections")
    parser.add_argument("--write", action="store_true", help="replace the suite section of benchmarks/README.md")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    command = "python benchmarks/suite.py " + " ".join(sys.argv[1:] if argv is None else argv)
    header = provenance(device, command.strip())
    print(header, flush=True)
    tables = []
    for section in args.only:
        start = time.perf_counter()
        table = heat(args.quick) if section == "heat" else RUNNERS[section](device, args.quick)
        print(f"({section}: {time.perf_counter() - start:.0f} s)", flush=True)
        tables.append(table)
    text = header + "\n\n" + "\n\n".join(t.markdown() for t in tables)
    if args.write:
        write_readme(text)


if __name__ == "__main__":
    main()
