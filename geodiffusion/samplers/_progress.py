"""Counting score evaluations behind an optional progress bar."""

from __future__ import annotations

from tqdm.auto import tqdm

from geodiffusion.processes.base import ScoreFn


class CountingScore:
    """Wraps a score function; counts evaluations and advances a tqdm bar when enabled."""

    def __init__(self, score: ScoreFn, progress: bool, total: int | None, desc: str) -> None:
        self.score = score
        self.evaluations = 0
        self.bar = tqdm(total=total, desc=desc, unit="eval", leave=False) if progress else None

    def __call__(self, t, x):
        self.evaluations += 1
        if self.bar is not None:
            self.bar.update(1)
        return self.score(t, x)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
