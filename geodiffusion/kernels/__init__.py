"""Matrix-valued GP kernels."""

from geodiffusion.kernels.base import Kernel
from geodiffusion.kernels.combinations import Product, Sum
from geodiffusion.kernels.stationary import Matern12, Matern32, Matern52, Periodic, SquaredExponential, WhiteNoise
from geodiffusion.kernels.vector import CurlFree, Diagonal, DivergenceFree

__all__ = [
    "Kernel",
    "SquaredExponential",
    "Matern12",
    "Matern32",
    "Matern52",
    "Periodic",
    "WhiteNoise",
    "Sum",
    "Product",
    "Diagonal",
    "CurlFree",
    "DivergenceFree",
]
