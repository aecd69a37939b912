"""Model likelihoods: the probability-flow estimator lives with the ODE sampler and is re-exported here."""

from geodiffusion.samplers.ode import ODEOptions, log_likelihood

__all__ = ["log_likelihood", "ODEOptions"]
