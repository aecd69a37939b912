"""Cost of exact equivariance: frame-averaged vs plain score model, measured in one run.

Run: ``python benchmarks/frame_averaging.py``. Prints a markdown table of the
forward+backward time per batch of the plain TimeMLP and of the same model
frame-averaged over C_n / D_n, and their ratio (the ideal ratio is |G|, since
frame averaging evaluates the model on |G| transformed copies in one batch).
"""

from __future__ import annotations

import argparse
import time

import torch

import geodiffusion as gd


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 2)
    t = torch.rand(args.batch)
    mlp = gd.TimeMLP(dim=2, hidden=128, depth=3)

    def step(model):
        def run():
            model.zero_grad()
            model(t, x).square().sum().backward()

        return run

    base = _time(step(mlp), args.repeats)
    print(f"device: cpu, torch threads: {torch.get_num_threads()}, batch {args.batch}")
    print("| model | group order | ms / step | ratio to plain MLP |")
    print("|---|---|---|---|")
    print(f"| mlp | 1 | {1e3 * base:.2f} | 1.00 |")
    for group in (gd.CyclicGroup(n=4), gd.CyclicGroup(n=6), gd.DihedralGroup(n=6)):
        fa = gd.FrameAveraged.wrap(mlp, group)
        cost = _time(step(fa), args.repeats)
        print(f"| frame_averaged {group.kind}(n={group.spec.n}) | {group.order} | {1e3 * cost:.2f} | {cost / base:.2f} |")


if __name__ == "__main__":
    main()
