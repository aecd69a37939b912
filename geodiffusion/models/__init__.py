"""Score models."""

from geodiffusion.models.base import ScoreModel
from geodiffusion.models.frame_averaging import FrameAveraged
from geodiffusion.models.layers import SinusoidalTimeEmbedding
from geodiffusion.models.mlp import TimeMLP
from geodiffusion.models.preconditioning import NoisePredictor
from geodiffusion.models.sets import SetTransformer

__all__ = ["ScoreModel", "TimeMLP", "FrameAveraged", "NoisePredictor", "SetTransformer", "SinusoidalTimeEmbedding"]
