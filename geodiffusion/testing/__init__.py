"""Public property-testing kit: hypothesis strategies, exact-score oracles and checks.

Every ``check_*`` raises :class:`CheckError` naming the identity that broke;
its ``*_errors`` twin returns the measured errors. The project's own tests run
these on every registered class; run them on your own subclasses the same way.
"""

from geodiffusion.testing import strategies
from geodiffusion.testing.checks import (
    CheckError,
    check_equivariant,
    check_group,
    check_heat_kernel,
    check_kernel,
    check_manifold,
    check_process,
    check_sampler,
    equivariance_errors,
    group_errors,
    heat_kernel_errors,
    kernel_errors,
    manifold_errors,
    process_errors,
    sampler_errors,
)
from geodiffusion.testing.invariance import check_invariance_conditions, invariance_condition_errors
from geodiffusion.testing.oracles import GaussianScore, GPScore, moment_z_scores
from geodiffusion.testing.tolerances import TOLERANCES, tolerance

__all__ = [
    "strategies",
    "CheckError",
    "GaussianScore",
    "GPScore",
    "moment_z_scores",
    "TOLERANCES",
    "tolerance",
    "check_group",
    "group_errors",
    "check_manifold",
    "manifold_errors",
    "check_heat_kernel",
    "heat_kernel_errors",
    "check_kernel",
    "kernel_errors",
    "check_process",
    "process_errors",
    "check_equivariant",
    "equivariance_errors",
    "check_sampler",
    "sampler_errors",
]
__all__ += ["check_invariance_conditions", "invariance_condition_errors"]
