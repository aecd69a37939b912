"""Matrix-valued GP kernels."""

from geodiffusion.kernels.base import Kernel
from geodiffusion.kernels.stationary import SquaredExponential

__all__ = ["Kernel", "SquaredExponential"]
