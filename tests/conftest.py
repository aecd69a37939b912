"""Shared test configuration: hypothesis profiles and registry-driven parametrisation."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import geodiffusion as gd
from geodiffusion.registry import families

settings.register_profile(
    "default", max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GEODIFFUSION_HYPOTHESIS_PROFILE", "default"))

DTYPES = [torch.float32, torch.float64]

# the quickstart's quick variant shrunk further, for CLI/experiment runs of a few seconds
TINY_QUICKSTART = {
    "n_train": 256,
    "n_test": 64,
    "n_samples": 64,
    "n_equivariance": 32,
    "grid_size": 6,
    "model": {"hidden": 32, "depth": 2},
    "training": {"steps": 20, "batch_size": 64, "checkpoint_every": 10, "log_every": 5},
    "sampler": {"kind": "probability_flow", "method": "rk4", "steps": 8},
    "likelihood": {"method": "rk4", "steps": 8},
    "density_likelihood": {"steps": 8},
}


@pytest.fixture(autouse=True)
def one_thread():
    # pytest -n 2 on two cores: one intra-op thread per worker avoids oversubscription
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def registered_examples(base: type) -> list:
    """``pytest.param(spec, id=...)`` for every example spec of every registered subclass of ``base``."""
    params = []
    for kind, cls in sorted(gd.registry(base).items()):
        for i, spec in enumerate(cls.examples()):
            params.append(pytest.param(spec, id=f"{kind}-{i}"))
    return params


def all_registered_examples() -> list:
    return [p for family in families() for p in registered_examples(family)]
