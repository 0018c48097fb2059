"""Optimiser and learning-rate schedule: SGD with momentum and weight decay, linear warmup,
multi-step decay (AdelaiDet/detectron2's ``WarmupMultiStepLR``), and their resume semantics.

Resume semantics (:func:`load_solver_state`): a checkpoint supplies only *counters and state*
(the scheduler's iteration count, the optimiser's momentum buffers); every *hyperparameter*
(``base_lr``, ``momentum``, the weight decays, ``warmup_iters``, ``warmup_factor``, ``steps``,
``gamma``) comes from the config of the resumed run. Resuming with ``--set solver.steps=(500,)``
therefore decays at 500 from the resume point on; :func:`changed_solver_keys` names what changed
so the trainer can log it.
"""
from __future__ import annotations

import bisect
from typing import Any, Dict, Mapping, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "build_optimizer",
    "weight_decay_of",
    "NORM_LAYERS",
    "WarmupMultiStepLR",
    "build_lr_scheduler",
    "lr_factor_at",
    "load_solver_state",
    "changed_solver_keys",
    "SCHEDULE_KEYS",
]

# The solver settings that shape the optimisation; on resume they come from the new config.
SCHEDULE_KEYS = ("base_lr", "momentum", "weight_decay", "weight_decay_norm", "weight_decay_bias", "warmup_iters", "warmup_factor", "steps", "gamma", "max_iter")


#: The layers whose parameters decay with ``solver.weight_decay_norm`` (detectron2's list).
NORM_LAYERS = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def weight_decay_of(module: nn.Module, param_name: str, solver_cfg) -> float:
    """The weight decay of ``module``'s own parameter ``param_name``, as detectron2's
    ``get_default_optimizer_params`` decides it: ``solver.weight_decay`` for every parameter,
    ``solver.weight_decay_norm`` for those of normalisation layers (:data:`NORM_LAYERS`), and,
    when ``solver.weight_decay_bias`` is set (>= 0), that value for every parameter named
    ``bias``, normalisation layers' included (detectron2 applies its bias override last)."""
    decay = solver_cfg.weight_decay
    if isinstance(module, NORM_LAYERS):
        decay = solver_cfg.weight_decay_norm
    if param_name == "bias" and solver_cfg.weight_decay_bias >= 0:
        decay = solver_cfg.weight_decay_bias
    return float(decay)


def build_optimizer(model: nn.Module, solver_cfg) -> torch.optim.SGD:
    """SGD over the trainable parameters of ``model``, one group per weight decay
    (:func:`weight_decay_of`): every parameter decays with ``solver.weight_decay`` except the
    normalisation layers' (``solver.weight_decay_norm``, 0 by default), biases included unless
    ``solver.weight_decay_bias`` says otherwise, as in detectron2/AdelaiDet.
    """
    if solver_cfg.base_lr <= 0:
        raise ValueError(f"solver.base_lr must be > 0, got {solver_cfg.base_lr}")
    for key in ("weight_decay", "weight_decay_norm"):
        if getattr(solver_cfg, key) < 0:
            raise ValueError(f"solver.{key} must be >= 0, got {getattr(solver_cfg, key)}")
    groups: Dict[float, list] = {}
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            groups.setdefault(weight_decay_of(module, name, solver_cfg), []).append(param)
    param_groups = [{"params": params, "weight_decay": decay} for decay, params in groups.items()]
    return torch.optim.SGD(param_groups, lr=solver_cfg.base_lr, momentum=solver_cfg.momentum)


def lr_factor_at(iteration: int, *, warmup_iters: int, warmup_factor: float, steps: Sequence[int], gamma: float) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based).

    Linear warmup from ``warmup_factor`` to 1 over ``warmup_iters`` iterations, then
    ``gamma ** (number of steps <= iteration)``.
    """
    factor = gamma ** bisect.bisect_right(sorted(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


class WarmupMultiStepLR(torch.optim.lr_scheduler.LambdaLR):
    """Per-iteration scheduler: call ``step()`` once after every optimiser step."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_iters: int, warmup_factor: float,
                 steps: Sequence[int], gamma: float):
        if any(step <= 0 for step in steps):
            raise ValueError(f"solver.steps must be iterations >= 1, got {list(steps)}")
        if any(later <= earlier for earlier, later in zip(steps, steps[1:])):
            raise ValueError(f"solver.steps must be strictly increasing, got {list(steps)}")
        if warmup_iters < 0:
            raise ValueError(f"solver.warmup_iters must be >= 0, got {warmup_iters}")
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.steps = tuple(steps)
        self.gamma = gamma
        super().__init__(optimizer, self._factor)

    def _factor(self, iteration: int) -> float:
        return lr_factor_at(iteration, warmup_iters=self.warmup_iters, warmup_factor=self.warmup_factor,
                            steps=self.steps, gamma=self.gamma)

    def state_dict(self) -> Dict[str, int]:
        """Only the counters: the schedule itself comes from the config (module doc)."""
        return {"last_epoch": int(self.last_epoch), "_step_count": int(self._step_count)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the counters and set the optimiser's learning rates for the restored iteration
        under *this* scheduler's schedule. Schedule entries in older checkpoints (``steps``,
        ``gamma``, ``base_lrs``...) are ignored on purpose (module doc)."""
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict["_step_count"])
        factor = self._factor(self.last_epoch)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, solver_cfg) -> WarmupMultiStepLR:
    """The scheduler of ``solver_cfg``. A step beyond ``solver.max_iter`` is refused
    (``ValueError`` naming both values): the run would never reach it. A run that is to be
    continued further sets its steps when it is resumed with the larger ``max_iter`` (the schedule
    comes from the resumed run's config, module doc)."""
    beyond = [step for step in solver_cfg.steps if step > solver_cfg.max_iter]
    if beyond:
        raise ValueError(f"solver.steps {list(solver_cfg.steps)} go beyond solver.max_iter={solver_cfg.max_iter} "
                         f"(step {beyond[0]} is never reached): lower the steps, or set solver.steps=() for no decay")
    return WarmupMultiStepLR(optimizer, warmup_iters=solver_cfg.warmup_iters, warmup_factor=solver_cfg.warmup_factor,
                             steps=solver_cfg.steps, gamma=solver_cfg.gamma)


def load_solver_state(optimizer: torch.optim.Optimizer, scheduler: WarmupMultiStepLR, *,
                      optimizer_state: Mapping[str, Any], scheduler_state: Mapping[str, Any]) -> None:
    """Resume ``optimizer`` and ``scheduler`` (both built from the *new* config) from a checkpoint.

    The optimiser's per-parameter state (momentum buffers) and the scheduler's counters are
    restored; each parameter group keeps the hyperparameters it was built with (``lr``,
    ``initial_lr``, ``momentum``, ``weight_decay``...), so the new config wins (module doc).
    """
    built_with = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(optimizer_state)
    for group, hyperparameters in zip(optimizer.param_groups, built_with):
        group.update(hyperparameters)
    scheduler.load_state_dict(scheduler_state)


def _comparable(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def changed_solver_keys(saved_solver: Mapping[str, Any], solver_cfg) -> Dict[str, Tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for the :data:`SCHEDULE_KEYS` that differ between a
    checkpoint's embedded ``config["solver"]`` and ``solver_cfg``."""
    changed = {}
    for key in SCHEDULE_KEYS:
        if key not in saved_solver:
            continue
        old, new = saved_solver[key], getattr(solver_cfg, key)
        if _comparable(old) != _comparable(new):
            changed[key] = (old, new)
    return changed
