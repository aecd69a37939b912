"""Datasets: generated toy data with exact densities, and the earth-science events on S^2 shipped with the package."""

from geodiffusion.data.earth import EARTH_DATASETS, lat_lon_to_sphere, load_earth, load_events, random_split, sphere_to_lat_lon
from geodiffusion.data.toy import RingOfGaussians, ring_centres, ring_of_gaussians, ring_of_gaussians_log_prob

__all__ = [
    "EARTH_DATASETS",
    "load_earth",
    "load_events",
    "lat_lon_to_sphere",
    "sphere_to_lat_lon",
    "random_split",
    "RingOfGaussians",
    "ring_of_gaussians",
    "ring_of_gaussians_log_prob",
    "ring_centres",
]
