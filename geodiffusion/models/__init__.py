"""Score models."""

from geodiffusion.models.base import ScoreModel
from geodiffusion.models.edge import EdgeConv, EdgeScoreModel
from geodiffusion.models.egnn import EGNNLayer, EGNNScore, FieldGraphGroup
from geodiffusion.models.frame_averaging import FrameAveraged
from geodiffusion.models.gauge import GaugePotential
from geodiffusion.models.group_conv import GroupConv2d, GroupNorm, GroupPool, LiftingConv2d
from geodiffusion.models.layers import SinusoidalTimeEmbedding
from geodiffusion.models.mlp import TimeMLP
from geodiffusion.models.ndp import (
    BiDimensionalAttention,
    FunctionMLP,
    FunctionScoreModel,
    GPResidualScore,
    TangentFunctionScore,
)
from geodiffusion.models.preconditioning import NoisePredictor
from geodiffusion.models.sets import SetTransformer
from geodiffusion.models.tangent import TangentMLP
from geodiffusion.models.unet import EquivariantUNet, UNet

__all__ = ["ScoreModel", "TimeMLP", "FrameAveraged", "NoisePredictor", "SetTransformer", "SinusoidalTimeEmbedding"]
__all__ += ["EdgeScoreModel", "EdgeConv"]
__all__ += ["UNet", "EquivariantUNet", "LiftingConv2d", "GroupConv2d", "GroupPool", "GroupNorm"]
__all__ += ["TangentMLP", "GaugePotential"]
__all__ += ["FunctionScoreModel", "BiDimensionalAttention", "FunctionMLP", "TangentFunctionScore", "GPResidualScore"]
__all__ += ["EGNNScore", "EGNNLayer", "FieldGraphGroup"]
