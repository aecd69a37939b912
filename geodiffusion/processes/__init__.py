"""Forward noising processes."""

from geodiffusion.processes.base import LinearGaussianProcess, Process, ScoreFn, TorchsdeReverse
from geodiffusion.processes.bridges import (
    DenoiserBridgeScore,
    DiffusionBridge,
    GaussianBridgeScore,
    VEBridge,
    VPBridge,
    bridge_errors,
    bridge_score_matching_loss,
    check_bridge,
)
from geodiffusion.processes.distance import DistanceVEProcess, NoncentralChi3
from geodiffusion.processes.distributions import DiagonalGaussian
from geodiffusion.processes.euclidean import SubVPProcess, VEProcess, VPProcess
from geodiffusion.processes.gp import FullGaussian, KernelFactor, OUGaussianProcess
from geodiffusion.processes.riemannian import BrownianProcess, HeatKernelMarginal, HeatKernelScore, UniformPrior

__all__ = [
    "OUGaussianProcess",
    "KernelFactor",
    "FullGaussian",
    "Process",
    "LinearGaussianProcess",
    "ScoreFn",
    "TorchsdeReverse",
    "DiagonalGaussian",
    "VPProcess",
    "SubVPProcess",
    "VEProcess",
    "DistanceVEProcess",
    "NoncentralChi3",
    "BrownianProcess",
    "HeatKernelMarginal",
    "UniformPrior",
    "HeatKernelScore",
]
__all__ += ["DiffusionBridge", "VPBridge", "VEBridge", "DenoiserBridgeScore", "GaussianBridgeScore"]
__all__ += ["bridge_score_matching_loss", "bridge_errors", "check_bridge"]
