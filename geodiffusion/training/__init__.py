"""Training: denoising score matching, EMA, atomic checkpoints and one resumable, data-parallel training loop."""

from geodiffusion.training.bridges import BridgeTrainer
from geodiffusion.training.checkpoint import load_checkpoint, load_ema_model, save_checkpoint
from geodiffusion.training.distributed import DistributedContext, batch_bounds, is_main_process, setup_distributed
from geodiffusion.training.ema import EMA
from geodiffusion.training.functions import (
    FunctionTrainer,
    FunctionTrainingSpec,
    function_dsm_loss,
    function_dsm_weight,
    function_riemannian_dsm_loss,
)
from geodiffusion.training.graph import (
    DistanceDSMValidation,
    DistanceWeighting,
    GraphTrainer,
    GraphTrainingSpec,
    NoiseLevelLogWeight,
    distance_dsm_loss,
    distance_dsm_weight,
)
from geodiffusion.training.losses import WEIGHTINGS, Weighting, dsm_loss
from geodiffusion.training.riemannian import RIEMANNIAN_WEIGHTINGS, RiemannianWeighting, riemannian_dsm_loss
from geodiffusion.training.trainer import LRScheduleSpec, Trainer, TrainerBase, TrainingSpec, Validation, derive_seed

__all__ = [
    "dsm_loss",
    "Weighting",
    "WEIGHTINGS",
    "EMA",
    "save_checkpoint",
    "load_checkpoint",
    "load_ema_model",
    "Trainer",
    "LRScheduleSpec",
    "TrainingSpec",
    "derive_seed",
]
__all__ += ["riemannian_dsm_loss", "RiemannianWeighting", "RIEMANNIAN_WEIGHTINGS"]
__all__ += ["function_dsm_loss", "function_dsm_weight", "function_riemannian_dsm_loss", "FunctionTrainer", "FunctionTrainingSpec"]
__all__ += ["DistributedContext", "setup_distributed", "batch_bounds", "is_main_process"]
__all__ += [
    "GraphTrainer",
    "GraphTrainingSpec",
    "distance_dsm_loss",
    "distance_dsm_weight",
    "DistanceDSMValidation",
    "DistanceWeighting",
    "NoiseLevelLogWeight",
]
__all__ += ["TrainerBase", "BridgeTrainer", "Validation"]
