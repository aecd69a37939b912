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


def registered_examples(base: type) -> list:
    """``pytest.param(spec, id=...)`` for every example spec of every registered subclass of ``base``."""
    params = []
    for kind, cls in sorted(gd.registry(base).items()):
        for i, spec in enumerate(cls.examples()):
            params.append(pytest.param(spec, id=f"{kind}-{i}"))
    return params


def all_registered_examples() -> list:
    return [p for family in families() for p in registered_examples(family)]
