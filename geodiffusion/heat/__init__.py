"""Heat kernels of Brownian motion on manifolds."""

from geodiffusion.heat.base import HeatKernel
from geodiffusion.heat.euclidean import EuclideanHeatKernel

__all__ = ["HeatKernel", "EuclideanHeatKernel"]
