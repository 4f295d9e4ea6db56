"""Training: StableAdamW, the warm-up + cosine schedule, checkpoints and the training loop."""

from filterformer.training.checkpoint import load_checkpoint, save_checkpoint
from filterformer.training.loop import NonFiniteLossError, OptimizerSettings, TrainResult, train
from filterformer.training.optim import StableAdamW, build_optimizer
from filterformer.training.schedule import WarmupCosine

__all__ = [
    "NonFiniteLossError",
    "OptimizerSettings",
    "StableAdamW",
    "TrainResult",
    "WarmupCosine",
    "build_optimizer",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
