"""Symmetry groups and their actions."""

from geodiffusion.groups.base import FiniteGroup, Group
from geodiffusion.groups.gauge import LatticeGauge
from geodiffusion.groups.matrix import (
    EuclideanGroup,
    Orthogonal,
    SpecialEuclidean,
    SpecialOrthogonal,
    Translations,
    haar_orthogonal,
)
from geodiffusion.groups.permutation import Permutations
from geodiffusion.groups.planar import CyclicGroup, DihedralGroup

__all__ = [
    "Group",
    "FiniteGroup",
    "CyclicGroup",
    "DihedralGroup",
    "SpecialOrthogonal",
    "Orthogonal",
    "SpecialEuclidean",
    "EuclideanGroup",
    "Translations",
    "Permutations",
    "LatticeGauge",
    "haar_orthogonal",
]
