"""The training loop: SGD + warmup/multi-step LR, AMP on CUDA, optional gradient clipping, DDP,
periodic atomic checkpoints, exact resume, metrics as JSON lines, a loss-curve PNG, periodic
evaluation, and a clean stop on a non-finite loss."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .checkpoint import Checkpointer, capture_rng_state, load_checkpoint, restore_rng_state
from .distributed import (
    barrier,
    convert_sync_batchnorm,
    get_world_size,
    is_distributed,
    is_main_process,
    reduce_metrics,
)
from .solver import build_lr_scheduler, build_optimizer

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "plot_loss_curve"]

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[nn.Module], Dict[str, Any]]


class NonFiniteLossError(RuntimeError):
    """Raised when the (rank-averaged) training loss is NaN or infinite."""


@dataclass
class TrainResult:
    """What a training run produced."""

    output_dir: Path
    iteration: int
    final_checkpoint: Optional[Path]
    metrics_path: Path
    loss_curve_path: Optional[Path]
    losses: List[Dict[str, float]] = field(default_factory=list)  # per-iteration metrics of this run
    eval_results: Dict[str, Any] = field(default_factory=dict)  # last evaluation


def _to_device(images, targets, device: torch.device):
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


class Trainer:
    """Train a detection model that returns a dict of losses in train mode.

    Args:
        model: ``model(images: list[Tensor(3,H,W)], targets: list[dict]) -> dict[str, Tensor]``.
        cfg: a ``BlendMaskConfig`` (its ``solver`` section drives the loop; the whole config is
            embedded in every checkpoint).
        train_dataset: map-style data set of ``(image, target)``; random augmentations use torch's
            global RNG, which :func:`blendmask.data.build_train_loader` seeds per sample.
        output_dir: where checkpoints, ``metrics.jsonl`` and ``loss_curve.png`` go.
        evaluate: optional ``evaluate(model) -> dict`` called on rank 0 every
            ``solver.eval_period`` iterations (and at the end); the dict is logged.
        device: where to train (the default is CUDA if available, else the CPU).
        seed: seed of the data order and augmentations (the resumable order of
            :func:`blendmask.data.build_train_loader`).
        num_workers: data-loader worker processes.
        show_progress: show a tqdm bar on rank 0.
        extra_state: more entries for every checkpoint (e.g. ``class_names``); plain data only.
    """

    def __init__(self, *, model: nn.Module, cfg, train_dataset: Dataset, output_dir, evaluate: Optional[EvaluateFn] = None,
                 device: Optional[torch.device] = None, seed: int = 0, num_workers: int = 0, show_progress: bool = True,
                 extra_state: Optional[Dict[str, Any]] = None):
        self.cfg = cfg
        self.solver = cfg.solver
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.output_dir = Path(output_dir)
        self.evaluate_fn = evaluate
        self.seed = seed
        self.num_workers = num_workers
        self.show_progress = show_progress
        self.train_dataset = train_dataset
        self.extra_state = dict(extra_state or {})

        world_size = get_world_size()
        if self.solver.ims_per_batch % world_size:
            raise ValueError(f"solver.ims_per_batch={self.solver.ims_per_batch} is not divisible by the "
                             f"world size {world_size}")
        if self.solver.max_iter <= 0:
            raise ValueError(f"solver.max_iter must be > 0, got {self.solver.max_iter}")
        self.batch_per_rank = self.solver.ims_per_batch // world_size

        model = convert_sync_batchnorm(model.to(self.device), self.device)
        self.model = model
        self.optimizer = build_optimizer(model, self.solver)
        self.scheduler = build_lr_scheduler(self.optimizer, self.solver)
        self.use_amp = bool(self.solver.amp) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        if is_distributed():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        else:
            self.train_model = model
        self.checkpointer = Checkpointer(self.output_dir)
        self.start_iter = 0
        self._resumed_rng: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, iteration: int) -> Dict[str, Any]:
        return {
            **self.extra_state,
            "model": self.model.state_dict(),
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": iteration,
            "data_order": {"seed": self.seed, "ims_per_batch": self.solver.ims_per_batch},
            "rng": capture_rng_state(),
        }

    def save_checkpoint(self, name: str, iteration: int) -> Optional[Path]:
        path = None
        if is_main_process():
            path = self.checkpointer.save(name, self.checkpoint_state(iteration))
        barrier()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint in ``output_dir`` (model, optimiser, scheduler, iteration,
        RNG state, data order). Returns False if there is none."""
        path = self.checkpointer.last_checkpoint()
        if path is None:
            return False
        data = load_checkpoint(path)
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        if "scaler" in data:
            self.scaler.load_state_dict(data["scaler"])
        self.start_iter = int(data["iteration"])
        self.seed = int(data["data_order"]["seed"])
        if data["data_order"]["ims_per_batch"] != self.solver.ims_per_batch:
            raise ValueError(f"cannot resume {path}: it was trained with solver.ims_per_batch="
                             f"{data['data_order']['ims_per_batch']}, the config now says {self.solver.ims_per_batch}")
        self._resumed_rng = data["rng"]
        logger.info("resumed from %s at iteration %d", path, self.start_iter)
        return True

    def load_weights(self, path) -> List[str]:
        """Initialise the model from a weights file; parameters whose name or shape does not match
        (e.g. a classifier for another number of classes) are skipped. Returns the skipped names."""
        state = load_checkpoint(path)["model"]
        own = self.model.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        skipped = sorted(set(own) - set(usable))
        self.model.load_state_dict(usable, strict=False)
        if skipped:
            logger.warning("%d tensors not initialised from %s (absent or of another shape), e.g. %s",
                           len(skipped), path, skipped[:3])
        return skipped

    # ------------------------------------------------------------------ loop
    def _data_loader(self) -> DataLoader:
        from blendmask.data import build_train_loader

        return build_train_loader(self.train_dataset, batch_size=self.batch_per_rank, num_workers=self.num_workers,
                                  seed=self.seed, start_iter=self.start_iter)

    def _step(self, images, targets) -> Dict[str, float]:
        with torch.autocast(self.device.type, enabled=self.use_amp):
            loss_dict = self.train_model(images, targets)
        total = sum(loss_dict.values())
        metrics = {k: float(v.detach()) for k, v in loss_dict.items()}
        metrics["loss_total"] = float(total.detach())
        metrics = reduce_metrics(metrics)
        if not math.isfinite(metrics["loss_total"]):
            raise NonFiniteLossError(
                "training stopped: the loss became non-finite ("
                + ", ".join(f"{k}={v}" for k, v in sorted(metrics.items()))
                + "). Try a lower solver.base_lr, a longer solver.warmup_iters or solver.clip_grad_norm."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.solver.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.solver.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        return metrics

    def _evaluate(self, iteration: int, log) -> Dict[str, Any]:
        results: Dict[str, Any] = {}
        if self.evaluate_fn is not None and is_main_process():
            self.model.eval()
            with torch.no_grad():
                results = self.evaluate_fn(self.model)
            self.model.train()
            log({"iteration": iteration, "eval": results})
        barrier()
        return results

    def train(self) -> TrainResult:
        """Run from ``start_iter`` to ``solver.max_iter``. Raises :class:`NonFiniteLossError` (after
        logging) if the loss becomes NaN/inf; the last good checkpoint is left untouched."""
        main = is_main_process()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.output_dir / "metrics.jsonl"
        # A fresh run starts a new metrics file; a resumed one appends to it.
        metrics_file = open(metrics_path, "a" if self.start_iter > 0 else "w") if main else None

        def log(record: Dict[str, Any]) -> None:
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()

        if self._resumed_rng is not None:
            restore_rng_state(self._resumed_rng)
        max_iter = self.solver.max_iter
        period = self.solver.checkpoint_period
        eval_period = self.solver.eval_period
        history: List[Dict[str, float]] = []
        eval_results: Dict[str, Any] = {}
        iteration = self.start_iter
        bar = tqdm(total=max_iter, initial=iteration, desc="train", disable=not (main and self.show_progress),
                   dynamic_ncols=True)
        self.train_model.train()
        try:
            data_iter = iter(self._data_loader())
            while iteration < max_iter:
                start = time.perf_counter()
                images, targets = next(data_iter)
                images, targets = _to_device(images, targets, self.device)
                data_time = time.perf_counter() - start
                metrics = self._step(images, targets)
                iteration += 1
                metrics.update(iteration=iteration, time=time.perf_counter() - start, data_time=data_time)
                history.append(metrics)
                log(metrics)
                bar.set_postfix(loss=f"{metrics['loss_total']:.3f}", lr=f"{metrics['lr']:.2e}", refresh=False)
                bar.update(1)
                if period > 0 and iteration % period == 0 and iteration < max_iter:
                    self.save_checkpoint(f"model_{iteration:07d}", iteration)
                if eval_period > 0 and iteration % eval_period == 0 and iteration < max_iter:
                    eval_results = self._evaluate(iteration, log)
        except NonFiniteLossError as exc:
            log({"iteration": iteration + 1, "error": str(exc)})
            last = self.checkpointer.last_checkpoint()
            note = f" The last good checkpoint is {last}." if last else " No checkpoint had been written yet."
            raise NonFiniteLossError(f"{exc}{note}") from None
        finally:
            bar.close()
            if metrics_file is not None:
                metrics_file.close()

        final = self.save_checkpoint("model_final", iteration)
        if self.evaluate_fn is not None:
            metrics_file = open(metrics_path, "a") if main else None
            try:
                eval_results = self._evaluate(iteration, log)
            finally:
                if metrics_file is not None:
                    metrics_file.close()
        curve = plot_loss_curve(metrics_path, self.output_dir / "loss_curve.png") if main else None
        return TrainResult(output_dir=self.output_dir, iteration=iteration, final_checkpoint=final,
                           metrics_path=metrics_path, loss_curve_path=curve, losses=history, eval_results=eval_results)


def plot_loss_curve(metrics_path: Path, png_path: Path) -> Optional[Path]:
    """Plot the loss terms and the learning rate of a ``metrics.jsonl`` file to a PNG (one panel each)."""
    from blendmask.visualize import plot_curves

    with open(metrics_path) as handle:
        first = next((json.loads(line) for line in handle if '"loss_total"' in line), None)
    if first is None:
        return None
    keys = ["loss_total"] + sorted(k for k in first if k.startswith("loss") and k != "loss_total") + ["lr"]
    return Path(plot_curves(metrics_path, png_path, keys))
