"""Heat kernels of Brownian motion on manifolds."""

from geodiffusion.heat.base import HeatKernel
from geodiffusion.heat.euclidean import EuclideanHeatKernel
from geodiffusion.heat.sphere import SphereHeatKernel, geodesic_random_walk

__all__ = ["HeatKernel", "EuclideanHeatKernel", "SphereHeatKernel", "geodesic_random_walk"]
