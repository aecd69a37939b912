"""Metrics: two-sample distances, equivariance error and likelihoods."""

from geodiffusion.metrics.conformers import coverage_matching, heavy_atom_rmsd_matrix, summarise_coverage
from geodiffusion.metrics.equivariance import equivariance_error
from geodiffusion.metrics.likelihood import ODEOptions, log_likelihood
from geodiffusion.metrics.two_sample import energy_distance, median_bandwidth, mmd_rbf

__all__ = ["energy_distance", "mmd_rbf", "median_bandwidth", "equivariance_error", "log_likelihood", "ODEOptions"]
__all__ += ["coverage_matching", "heavy_atom_rmsd_matrix", "summarise_coverage"]
