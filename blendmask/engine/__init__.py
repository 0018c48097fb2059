"""Training engine: the training loop, solver, checkpoints and distributed helpers."""
from .checkpoint import Checkpointer, atomic_save, load_checkpoint, load_model_from_weights
from .distributed import get_rank, get_world_size, init_distributed, is_main_process, reduce_metrics
from .solver import WarmupMultiStepLR, build_lr_scheduler, build_optimizer
from .trainer import NonFiniteLossError, Trainer, TrainResult, plot_loss_curve

__all__ = [
    "Checkpointer",
    "atomic_save",
    "load_checkpoint",
    "load_model_from_weights",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "reduce_metrics",
    "WarmupMultiStepLR",
    "build_lr_scheduler",
    "build_optimizer",
    "NonFiniteLossError",
    "Trainer",
    "TrainResult",
    "plot_loss_curve",
]
