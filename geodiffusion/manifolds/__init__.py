"""Riemannian manifolds."""

from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.euclidean import Euclidean
from geodiffusion.manifolds.lie import SO3, SU
from geodiffusion.manifolds.product import MixedProductManifold, ProductManifold
from geodiffusion.manifolds.sphere import Sphere
from geodiffusion.manifolds.torus import Torus

__all__ = ["Manifold", "Euclidean", "Sphere", "Torus", "SO3", "SU", "ProductManifold", "MixedProductManifold"]
