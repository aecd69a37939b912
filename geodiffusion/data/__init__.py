"""Datasets: generated toy data with exact densities."""

from geodiffusion.data.toy import RingOfGaussians, ring_centres, ring_of_gaussians, ring_of_gaussians_log_prob

__all__ = ["RingOfGaussians", "ring_of_gaussians", "ring_of_gaussians_log_prob", "ring_centres"]
