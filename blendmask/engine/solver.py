"""Optimiser and learning-rate schedule: SGD with momentum and weight decay, linear warmup,
multi-step decay (AdelaiDet/detectron2's ``WarmupMultiStepLR``)."""
from __future__ import annotations

import bisect
from typing import Sequence

import torch
from torch import nn

__all__ = ["build_optimizer", "WarmupMultiStepLR", "build_lr_scheduler", "lr_factor_at"]


def build_optimizer(model: nn.Module, solver_cfg) -> torch.optim.SGD:
    """SGD over the trainable parameters of ``model``.

    Weight decay is not applied to normalisation layers' weights and biases (1-d parameters),
    as is customary for detection models with GN/BN.
    """
    if solver_cfg.base_lr <= 0:
        raise ValueError(f"solver.base_lr must be > 0, got {solver_cfg.base_lr}")
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": solver_cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=solver_cfg.base_lr, momentum=solver_cfg.momentum)


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
        if list(steps) != sorted(steps):
            raise ValueError(f"solver.steps must be increasing, got {list(steps)}")
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

    def state_dict(self):
        # LambdaLR would try to pickle the bound method; the schedule is fully described by
        # the constructor arguments, so only the counters are saved.
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, solver_cfg) -> WarmupMultiStepLR:
    return WarmupMultiStepLR(optimizer, warmup_iters=solver_cfg.warmup_iters, warmup_factor=solver_cfg.warmup_factor,
                             steps=solver_cfg.steps, gamma=solver_cfg.gamma)
