"""Distributed helpers, the package's one home for them: process-group setup from torchrun's
environment, rank queries, metric and tensor reduction, object gathering, and SyncBN conversion
(only when a process group exists).

This module imports only torch, so any part of the package (models, data, evaluation) can use
it without an import cycle."""
from __future__ import annotations

import datetime
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "init_distributed",
    "destroy_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "dist_rank_and_world_size",
    "is_main_process",
    "barrier",
    "reduce_metrics",
    "reduce_mean",
    "all_gather_objects",
    "convert_sync_batchnorm",
    "CPUSyncBatchNorm2d",
    "device_for_rank",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def dist_rank_and_world_size(distributed: Optional[bool]) -> Tuple[int, int]:
    """``(rank, world_size)`` of this process.

    ``distributed=None`` detects an initialised ``torch.distributed`` process group; ``True``
    requires one (``RuntimeError`` otherwise); ``False`` ignores it and returns ``(0, 1)``.
    """
    initialised = is_distributed()
    if distributed is None:
        distributed = initialised
    if not distributed:
        return 0, 1
    if not initialised:
        raise RuntimeError("distributed=True but torch.distributed is not initialised (call init_process_group first)")
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    return get_rank() == 0


def device_for_rank(prefer_cuda: bool = True) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (and wanted), else the CPU."""
    if prefer_cuda and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def init_distributed(device: torch.device) -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``,
    ``MASTER_ADDR``...). Uses NCCL for CUDA devices and gloo on the CPU.

    Returns True if a process group was created (world size > 1), False for a single process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return True


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def reduce_metrics(metrics: Dict[str, float]) -> Dict[str, float]:
    """Average scalar metrics over all ranks (identity for a single process).

    Every rank must call this with the same keys in the same order.
    """
    if not is_distributed() or not metrics:
        return dict(metrics)
    keys = sorted(metrics)
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=backend_device)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values /= get_world_size()
    return {k: float(v) for k, v in zip(keys, values.tolist())}


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` (any shape) over all ranks when a process group exists, else ``value`` itself.
    The result is detached: it is meant for normalisers, not for gradients."""
    if get_world_size() < 2:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def all_gather_objects(obj: Any) -> List[Any]:
    """A list with ``obj`` from every rank, in rank order (``[obj]`` for a single process).
    ``obj`` must be picklable; every rank must call this."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class CPUSyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are averaged over all ranks with a differentiable
    all-reduce. Works with gloo on the CPU, where ``nn.SyncBatchNorm`` is not supported.
    Assumes every rank has the same per-rank batch size (as the trainer guarantees).

    Input and output: ``(N, C, H, W)``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed() and get_world_size() > 1):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        channels = input.shape[1]
        mean = input.mean(dim=(0, 2, 3))
        mean_sq = (input * input).mean(dim=(0, 2, 3))
        stats = all_reduce(torch.cat([mean, mean_sq]), op=dist.ReduceOp.SUM) / get_world_size()
        mean, mean_sq = stats[:channels], stats[channels:]
        var = (mean_sq - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                count = input.numel() // channels * get_world_size()
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                unbiased = var.detach() * count / max(count - 1, 1)
                self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
            shift = self.bias - mean * scale
        else:
            shift = -mean * scale
        return input * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def _to_cpu_sync_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm2d):
        converted = CPUSyncBatchNorm2d(module.num_features, eps=module.eps, momentum=module.momentum,
                                       affine=module.affine, track_running_stats=module.track_running_stats)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        for param, source in zip(converted.parameters(), module.parameters()):
            param.requires_grad_(source.requires_grad)
        return converted
    for name, child in module.named_children():
        module.add_module(name, _to_cpu_sync_bn(child))
    return module


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace BatchNorm layers by synchronised ones if, and only if, a process group exists:
    ``nn.SyncBatchNorm`` on CUDA, :class:`CPUSyncBatchNorm2d` on the CPU (gloo)."""
    if not is_distributed():
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_cpu_sync_bn(model)
