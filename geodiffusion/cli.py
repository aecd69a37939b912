"""Command line: ``geodiffusion list``, ``geodiffusion run EXPERIMENT`` and ``geodiffusion conformers RUN SMILES...``."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import ValidationError

from geodiffusion.experiments import Experiment
from geodiffusion.registry import build, families, registry
from geodiffusion.spec import load_spec_file
from geodiffusion.training.distributed import env_world_size, launched_by_torchrun, local_device, setup_distributed

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geodiffusion", description="Diffusion models on geometric domains.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="print the registered experiments and components of every family")
    run = commands.add_parser(
        "run",
        help="train, sample and evaluate an experiment",
        description="Train, sample and evaluate EXPERIMENT. The spec is the experiment's default (or its --quick variant), "
        "with --config merged over it, then --seed; the resolved spec is written to OUT/spec.json. "
        "Under torchrun (e.g. `torchrun --nproc_per_node=4 -m geodiffusion run EXPERIMENT --device cuda`) training is "
        "data parallel over the workers (training.batch_size is the global batch), each worker uses cuda:LOCAL_RANK, "
        "and only rank 0 writes OUT and prints.",
    )
    run.add_argument("experiment", help="registered experiment kind (see `geodiffusion list`)")
    run.add_argument("--config", type=Path, help="JSON or YAML file of spec fields merged over the default spec")
    run.add_argument("--out", type=Path, help="output folder (default: runs/EXPERIMENT-<timestamp>)")
    run.add_argument("--quick", action="store_true", help="the small variant (tests, smoke runs)")
    run.add_argument("--seed", type=int, help="master seed and training seed")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    run.add_argument(
        "--threads", type=int, help="torch intra-op threads (default: the experiment's choice, else torch's default)"
    )
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--dry-run", action="store_true", help="print the resolved spec and exit")
    conformers = commands.add_parser(
        "conformers",
        help="sample conformers of molecules with a finished conformers-qm9 run",
        description="Sample N conformers of each SMILES (hydrogens added) with the network, graph and sampler of the "
        "finished conformers-qm9 run in RUN, each matched to the SMILES' tetrahedral stereo, and write them to an SD "
        "file (one record per conformer, named by its SMILES, with its 'conformer' index and 'stereo_correct' (1: every "
        "tagged tetrahedral centre as in the SMILES, 0: a diastereomer)).",
    )
    conformers.add_argument("run", type=Path, help="output folder of a finished conformers-qm9 run")
    conformers.add_argument("smiles", nargs="+", help="molecules as SMILES")
    conformers.add_argument("-n", type=int, default=10, help="conformers per molecule (default: 10)")
    conformers.add_argument("--out", type=Path, required=True, help="SD file to write (replaced atomically)")
    conformers.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    conformers.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    conformers.add_argument("--mmff", action="store_true", help="minimise each conformer with MMFF94 (200 iterations)")
    return parser


def _summary(cls: type) -> str:
    doc = (cls.Spec.__doc__ or cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _list(out) -> int:
    for family in sorted(families(), key=lambda f: (f is not Experiment, f.__name__)):
        table = registry(family)
        print(f"{family.__name__} ({len(table)}):", file=out)
        for kind, cls in sorted(table.items()):
            print(f"  {kind:<22} {_summary(cls)}", file=out)
    return 0


def _fail(message: str) -> int:
    print(f"geodiffusion: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    experiments = registry(Experiment)
    cls = experiments.get(args.experiment)
    if cls is None:
        return _fail(f"unknown experiment {args.experiment!r}; registered: {', '.join(sorted(experiments)) or 'none'}")
    overrides = None
    if args.config is not None:
        try:
            overrides = load_spec_file(str(args.config))
        except FileNotFoundError:
            return _fail(f"config file {args.config} not found")
        except Exception as err:  # JSON/YAML syntax errors of every parser
            return _fail(f"cannot read config {args.config}: {err}")
    try:
        spec = cls.resolve_spec(overrides, quick=args.quick, seed=args.seed)
    except ValidationError as err:
        source = f" (from {args.config})" if args.config is not None else ""
        return _fail(f"invalid configuration for experiment {args.experiment!r}{source}:\n{err}")
    if args.dry_run:
        print(json.dumps(spec.model_dump(mode="json"), indent=2))
        return 0
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        return _fail(f"invalid device {args.device!r}: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail(f"device {args.device!r} requested but CUDA is not available")
    threads = args.threads if args.threads is not None else cls.threads
    if threads is not None:
        if threads < 1:
            return _fail(f"--threads: expected a positive count, got {threads}")
        torch.set_num_threads(threads)

    out_dir = args.out or Path("runs") / f"{args.experiment}-{time.strftime('%Y%m%d-%H%M%S')}"
    experiment = build(spec, Experiment)
    try:
        experiment.check_out_dir(out_dir)
    except ValueError as err:
        return _fail(str(err))
    if launched_by_torchrun() and env_world_size() > 1:
        device = local_device(device)
        if not torch.distributed.is_initialized():
            # release the group we are about to create when the command ends
            atexit.register(lambda: torch.distributed.destroy_process_group() if torch.distributed.is_initialized() else None)
        # one process group for every trainer of the run (their DDP steps keep the workers in lockstep)
        context = setup_distributed(device)
        if context is not None and not context.is_main:
            # ranks > 0 run the same experiment (their trainers take part in each step) into a scratch folder:
            # rank 0 alone writes OUT (checkpoints, logs, metrics, plots) and prints
            with tempfile.TemporaryDirectory(prefix=f"geodiffusion-rank{context.rank}-") as scratch:
                experiment.execute(Path(scratch), device=device, progress=False)
            return 0
    print(f"running {args.experiment}{' (quick)' if args.quick else ''} into {out_dir}", flush=True)
    start = time.perf_counter()
    metrics = experiment.execute(out_dir, device=device, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.1f} s; outputs in {out_dir.resolve()}:")
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(out_dir)}")
    print("metrics:")
    width = max((len(k) for k in metrics), default=0)
    for name, value in metrics.items():
        print(f"  {name:<{width}}  {value:.6g}" if value is not None else f"  {name:<{width}}  null")
    return 0


def _conformers(args: argparse.Namespace) -> int:
    from rdkit import Chem

    from geodiffusion.experiments.conformers import generate_conformers

    if args.n < 1:
        return _fail(f"-n: expected a positive number of conformers, got {args.n}")
    if not args.out.parent.is_dir():
        return _fail(f"--out: folder {args.out.parent} does not exist")
    try:
        mols = generate_conformers(args.run, args.smiles, args.n, seed=args.seed, device=args.device, relax=args.mmff)
    except (ValueError, RuntimeError) as err:
        return _fail(str(err))
    # write beside the target, then rename: a reader never sees half a file
    partial = args.out.with_name(args.out.name + ".partial")
    writer = Chem.SDWriter(str(partial))
    for smiles, mol in zip(args.smiles, mols, strict=True):
        mol.SetProp("_Name", smiles)
        for conf in mol.GetConformers():
            mol.SetIntProp("conformer", conf.GetId())
            mol.SetIntProp("stereo_correct", int(conf.GetBoolProp("stereo_correct")))
            writer.write(mol, confId=conf.GetId())
    writer.close()
    os.replace(partial, args.out)
    print(f"wrote {args.n * len(mols)} conformers of {len(mols)} molecules to {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geodiffusion`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "list":
        return _list(sys.stdout)
    if args.command == "conformers":
        return _conformers(args)
    return _run(args)
