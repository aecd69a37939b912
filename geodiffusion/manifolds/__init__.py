"""Riemannian manifolds."""

from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.euclidean import Euclidean

__all__ = ["Manifold", "Euclidean"]
