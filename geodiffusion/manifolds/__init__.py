"""Riemannian manifolds."""

from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.euclidean import Euclidean
from geodiffusion.manifolds.sphere import Sphere

__all__ = ["Manifold", "Euclidean", "Sphere"]
