"""Datasets: generated toy data with exact densities, and the earth-science events on S^2 shipped with the package."""

from geodiffusion.data.conformers import CONFORMER_SPLITS, REFERENCE_NOTE, ConformerEnsemble, conformer_manifest, load_conformers
from geodiffusion.data.digits import DIGITS_SOURCE, PairedDigits, RotatedDigits, load_digits_images, rotate_c4, sobel_edges
from geodiffusion.data.earth import EARTH_DATASETS, lat_lon_to_sphere, load_earth, load_events, random_split, sphere_to_lat_lon
from geodiffusion.data.functions import (
    SCALAR_FUNCTIONS,
    VECTOR_FIELDS,
    data_kernel,
    sample_functions,
    sample_sphere_tracks,
    sample_vector_fields,
)
from geodiffusion.data.skeletons import SkeletonPoses
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
__all__ += ["RotatedDigits", "PairedDigits", "load_digits_images", "rotate_c4", "sobel_edges", "DIGITS_SOURCE"]
__all__ += ["SCALAR_FUNCTIONS", "VECTOR_FIELDS", "data_kernel", "sample_functions", "sample_vector_fields"]
__all__ += ["sample_sphere_tracks"]
__all__ += ["CONFORMER_SPLITS", "REFERENCE_NOTE", "ConformerEnsemble", "conformer_manifest", "load_conformers", "SkeletonPoses"]
