"""Samplers of the reverse dynamics, and likelihoods by the probability flow."""

from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.bridges import BridgeODESampler, BridgeSampler, BridgeSDESampler
from geodiffusion.samplers.conditional import (
    ConditionalSampler,
    LangevinConditional,
    ReplacementConditional,
    conditional_log_likelihood,
    marginal_log_likelihood,
)
from geodiffusion.samplers.equivariant_noise import EquivariantNoiseSampler, equivariant_noise, frame_elements
from geodiffusion.samplers.ode import ODEOptions, ProbabilityFlowSampler, divergence, log_likelihood
from geodiffusion.samplers.projection_free import DistanceToCoordinates, ProjectionFreeSampler
from geodiffusion.samplers.riemannian import (
    ChartODEOptions,
    GeodesicEulerMaruyama,
    RiemannianProbabilityFlow,
    riemannian_divergence,
    riemannian_log_likelihood,
)
from geodiffusion.samplers.sde import PredictorCorrector, SDESampler

__all__ = ["Sampler", "SDESampler", "PredictorCorrector", "ProbabilityFlowSampler", "ODEOptions", "log_likelihood", "divergence"]
__all__ += ["EquivariantNoiseSampler", "equivariant_noise", "frame_elements"]
__all__ += ["ProjectionFreeSampler", "DistanceToCoordinates"]
__all__ += ["GeodesicEulerMaruyama", "RiemannianProbabilityFlow", "ChartODEOptions"]
__all__ += ["riemannian_divergence", "riemannian_log_likelihood"]
__all__ += ["ConditionalSampler", "LangevinConditional", "ReplacementConditional"]
__all__ += ["marginal_log_likelihood", "conditional_log_likelihood"]
__all__ += ["BridgeSampler", "BridgeSDESampler", "BridgeODESampler"]
