r"""COV/MAT of a finished conformers-qm9 run's samples before and after MMFF94 relaxation, beside ETKDG's.

Relaxing every sample to its nearest force-field minimum separates two ways a sample can miss a reference: the
wrong basin (relaxation cannot fix it) and the right basin with imprecise bond lengths and angles (relaxation
does). The same is done to RDKit ETKDG conformers drawn as in the run (same counts, same seeds), so both methods get
the same post-processing. The references are GFN2-xTB minima, not MMFF ones, so relaxation has a floor of its own.
The row "model, stereo-correct" keeps only the samples whose tagged centres match the SMILES (``stereo_correct``).

    python scripts/relaxed_coverage.py --run runs/conformers-qm9-RUN
    python scripts/relaxed_coverage.py --run runs/conformers-qm9-RUN --samples resampled.pt --molecules 50
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from geodiffusion.data.conformers import load_conformers
from geodiffusion.experiments.conformers import (
    diverged_molecules,
    etkdg_conformers,
    mmff_relax,
    score_ensembles,
    stereo_correct,
)
from geodiffusion.metrics.conformers import summarise_coverage


def relax_all(test, samples, max_iters: int) -> tuple[list[torch.Tensor], dict[str, float]]:
    """MMFF-relaxed copies of every molecule's samples; blown-up or empty sample sets are kept as they are."""
    skip = diverged_molecules(test, samples)
    out, converged, total, kept = [], 0, 0, 0
    start = time.perf_counter()
    for e, x, blown in zip(test, samples, skip, strict=True):
        if blown or x.shape[0] == 0 or not torch.isfinite(x).all():
            out.append(x)
            kept += 1
            continue
        y, ok = mmff_relax(e.mol, x, max_iters)
        out.append(y)
        converged += int(ok.sum())
        total += len(ok)
    stats = {"converged": converged / max(total, 1), "kept": kept, "seconds": time.perf_counter() - start}
    return out, stats


def row(name: str, test, samples, threshold: float, keep_empty: bool = False) -> str:
    """One table row; with keep_empty, molecules without samples (ETKDG failures) count COV 0, out of MAT."""
    present = [k for k, x in enumerate(samples) if x.shape[0] > 0]
    if not present:
        return f"{name:<24s}{0.0:>9.3f}{'nan':>9s}{0.0:>9.3f}{'nan':>9s}"
    per, _, _ = score_ensembles([test[k] for k in present], [samples[k] for k in present], threshold)
    summary = summarise_coverage(per)
    cov_scale = len(present) / len(test) if keep_empty else 1.0
    cells = [summary["cov_r_mean"] * cov_scale, summary["mat_r_mean"], summary["cov_p_mean"] * cov_scale]
    cells.append(summary["mat_p_mean"])
    return f"{name:<24s}" + "".join(f"{c:>9.3f}" for c in cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished conformers-qm9 output folder")
    parser.add_argument("--samples", type=Path, default=None, help="samples file (default: the run's samples.pt)")
    parser.add_argument("--molecules", type=int, default=None, help="first test molecules (default: all sampled)")
    parser.add_argument("--max-iters", type=int, default=200, help="MMFF minimiser iterations (RDKit's default)")
    parser.add_argument("--no-etkdg", action="store_true", help="leave out the ETKDG rows")
    args = parser.parse_args(argv)
    spec = json.loads((args.run / "spec.json").read_text())
    saved = torch.load(args.samples or args.run / "samples.pt", weights_only=True)
    n = len(saved["smiles"]) if args.molecules is None else min(args.molecules, len(saved["smiles"]))
    test = load_conformers("test", limit=spec["n_test"], max_atoms=spec["max_atoms"])[:n]
    if [e.smiles for e in test] != saved["smiles"][:n]:
        raise ValueError(f"{args.run}: the samples do not belong to the packaged test molecules in this order")
    samples = saved["model"][:n]
    threshold = spec["threshold"]
    print(f"{n} test molecules, {sum(e.n_conformers for e in test)} references; MMFF94, maxIters {args.max_iters}")
    print(f"{'':<24s}" + "".join(f"{h:>9s}" for h in ("COV-R", "MAT-R", "COV-P", "MAT-P")))
    relaxed, stats = relax_all(test, samples, args.max_iters)
    print(row("model", test, samples, threshold))
    print(row("model + MMFF", test, relaxed, threshold), flush=True)
    # diastereomers dropped: what a sampler that rejected them would keep (molecules left with none count COV 0)
    correct = [x[stereo_correct(x, e.mol)] if torch.isfinite(x).all() else x for x, e in zip(samples, test, strict=True)]
    print(row("model, stereo-correct", test, correct, threshold, keep_empty=True))
    if not args.no_etkdg:
        counts = [x.shape[0] for x in samples]
        etkdg, _ = etkdg_conformers(test, counts, spec["seed"])
        etkdg_relaxed, etkdg_stats = relax_all(test, etkdg, args.max_iters)
        print(row("ETKDG", test, etkdg, threshold, keep_empty=True))
        print(row("ETKDG + MMFF", test, etkdg_relaxed, threshold, keep_empty=True))
        print(f"ETKDG: {etkdg_stats['converged']:.1%} converged in {etkdg_stats['seconds']:.1f} s")
    print(
        f"model: {stats['converged']:.1%} of relaxations converged in {stats['seconds']:.1f} s; "
        f"{stats['kept']} molecules left unrelaxed (blown up); "
        f"{sum(x.shape[0] == 0 for x in correct)} molecules without a stereo-correct sample"
    )


if __name__ == "__main__":
    main()
