"""Training engine: the training loop and its hooks, solver and checkpoints.

The engine depends on the models and the data, never the reverse; the distributed helpers that
all of them use live in :mod:`blendmask.distributed`. The runs behind the commands (train,
evaluate, predict, export, demo) are :mod:`blendmask.engine.defaults`, which asks the
:class:`~blendmask.engine.tasks.Task` (instance or panoptic) for what differs; this package does
not import them, so that the training loop loads without the evaluation and prediction code."""
from .._deprecation import renamed_attributes
from .checkpoint import Checkpointer, atomic_save, load_checkpoint
from ..distributed import get_rank, get_world_size, init_distributed, is_main_process, reduce_metrics
from .solver import WarmupMultiStepLR, build_lr_scheduler, build_optimizer
from .hooks import plot_loss_curve
from .train_loop import HookBase, TrainerBase, TrainResult
from .trainer import MatchingWeightsReport, NonFiniteLossError, Trainer

__all__ = [
    "Checkpointer",
    "atomic_save",
    "load_checkpoint",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_main_process",
    "reduce_metrics",
    "WarmupMultiStepLR",
    "build_lr_scheduler",
    "build_optimizer",
    "HookBase",
    "TrainerBase",
    "MatchingWeightsReport",
    "NonFiniteLossError",
    "Trainer",
    "TrainResult",
    "plot_loss_curve",
]

__getattr__ = renamed_attributes(__name__, {"load_model_from_weights": "blendmask.models.load_model_from_weights"})
