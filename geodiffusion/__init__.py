"""geodiffusion: diffusion models on geometric domains.

The abstract base classes are the architecture: a :class:`Group` acts on a
space, a :class:`Manifold` carries a :class:`HeatKernel`, a :class:`Kernel`
defines a GP, a :class:`Process` noises data, a :class:`ScoreModel` learns its
score and a :class:`Sampler` runs the reverse dynamics. Every concrete class is
built from a pydantic spec with :func:`build` and listed by :func:`registry`.
"""

# subpackages whose components register themselves on import
from geodiffusion import experiments, metrics, training  # noqa: E402, F401
from geodiffusion.experiments import Experiment  # noqa: E402
from geodiffusion.groups import (
    CyclicGroup,
    DihedralGroup,
    EuclideanGroup,
    FiniteGroup,
    Group,
    Orthogonal,
    Permutations,
    SpecialEuclidean,
    SpecialOrthogonal,
    Translations,
)
from geodiffusion.heat import EuclideanHeatKernel, HeatKernel
from geodiffusion.kernels import Kernel, SquaredExponential
from geodiffusion.manifolds import Euclidean, Manifold, Sphere
from geodiffusion.models import FrameAveraged, NoisePredictor, ScoreModel, SetTransformer, TimeMLP
from geodiffusion.processes import LinearGaussianProcess, Process, SubVPProcess, VEProcess, VPProcess
from geodiffusion.registry import Component, build, families, registry, unregister
from geodiffusion.samplers import (
    ODEOptions,
    PredictorCorrector,
    ProbabilityFlowSampler,
    Sampler,
    SDESampler,
    log_likelihood,
)
from geodiffusion.spec import ComponentSpec, Spec, component_spec
from geodiffusion.training import Trainer, TrainingSpec  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Component",
    "Spec",
    "ComponentSpec",
    "component_spec",
    "build",
    "registry",
    "families",
    "unregister",
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
    "Manifold",
    "Euclidean",
    "Sphere",
    "HeatKernel",
    "EuclideanHeatKernel",
    "Kernel",
    "SquaredExponential",
    "Process",
    "LinearGaussianProcess",
    "VPProcess",
    "SubVPProcess",
    "VEProcess",
    "ScoreModel",
    "TimeMLP",
    "FrameAveraged",
    "NoisePredictor",
    "SetTransformer",
    "Sampler",
    "SDESampler",
    "PredictorCorrector",
    "ProbabilityFlowSampler",
    "ODEOptions",
    "log_likelihood",
    "Experiment",
    "Trainer",
    "TrainingSpec",
    "__version__",
]
