"""Metrics: two-sample distances, equivariance error and likelihoods."""

from geodiffusion.metrics.conformers import coverage_matching, heavy_atom_rmsd_matrix, kabsch_rmsd_matrix, summarise_coverage
from geodiffusion.metrics.equivariance import equivariance_error
from geodiffusion.metrics.images import (
    DigitClassifier,
    delta_x0,
    feature_frechet_distance,
    frechet_distance,
    l1_error,
    load_or_train_classifier,
    ssim,
    train_digit_classifier,
)
from geodiffusion.metrics.likelihood import ODEOptions, log_likelihood
from geodiffusion.metrics.two_sample import energy_distance, median_bandwidth, mmd_rbf

__all__ = ["energy_distance", "mmd_rbf", "median_bandwidth", "equivariance_error", "log_likelihood", "ODEOptions"]
__all__ += ["coverage_matching", "heavy_atom_rmsd_matrix", "kabsch_rmsd_matrix", "summarise_coverage"]
__all__ += ["DigitClassifier", "train_digit_classifier", "load_or_train_classifier", "frechet_distance"]
__all__ += ["feature_frechet_distance", "delta_x0", "l1_error", "ssim"]
