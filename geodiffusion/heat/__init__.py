"""Heat kernels of Brownian motion on manifolds."""

from geodiffusion.heat.base import HeatKernel
from geodiffusion.heat.euclidean import EuclideanHeatKernel
from geodiffusion.heat.lie import SO3HeatKernel, SUHeatKernel
from geodiffusion.heat.product import MixedProductHeatKernel, ProductHeatKernel
from geodiffusion.heat.sphere import SphereHeatKernel, geodesic_random_walk
from geodiffusion.heat.torus import TorusHeatKernel

__all__ = [
    "HeatKernel",
    "EuclideanHeatKernel",
    "SphereHeatKernel",
    "TorusHeatKernel",
    "geodesic_random_walk",
    "SO3HeatKernel",
    "SUHeatKernel",
    "ProductHeatKernel",
    "MixedProductHeatKernel",
]
