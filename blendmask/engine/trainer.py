"""The training loop: SGD + warmup/multi-step LR, AMP on CUDA, optional gradient clipping, DDP,
exact resume (every rank's RNG, the new config's schedule), and a clean stop on a non-finite loss.

Everything around the step (checkpoints, evaluation, metrics, plots, TensorBoard) is a hook
(:mod:`blendmask.engine.hooks`); :meth:`Trainer.train` is a loop of steps that calls them."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..distributed import barrier, convert_sync_batchnorm, get_world_size, is_distributed, is_main_process, reduce_metrics
from ..errors import BlendMaskError
from .checkpoint import (
    Checkpointer,
    capture_all_ranks_rng_state,
    load_checkpoint,
    restore_rng_state,
    rng_state_of_this_rank,
)
from .hooks import DIVERGENCE_ADVICE, default_hooks
from .train_loop import EvaluateFn, HookBase, RunRecords, TrainerBase, TrainResult
from .solver import build_lr_scheduler, build_optimizer, changed_solver_keys, load_solver_state

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "MatchingWeightsReport"]

logger = logging.getLogger(__name__)


def _autocast_dtype(solver, device: torch.device) -> Optional[torch.dtype]:
    """The mixed-precision dtype of training on ``device``, or None for float32: float16 on CUDA
    when ``solver.amp`` (with a GradScaler), bfloat16 on the CPU when ``solver.amp_cpu``."""
    if device.type == "cuda" and solver.amp:
        return torch.float16
    if device.type == "cpu" and solver.amp_cpu:
        return torch.bfloat16
    return None


class NonFiniteLossError(BlendMaskError, RuntimeError):
    """Raised when the (rank-averaged) training loss is NaN or infinite."""


@dataclass
class MatchingWeightsReport:
    """What :meth:`Trainer.load_matching_weights` did with a weights file.

    ``missing``: model tensors absent from the file (left as initialised); ``unexpected``: file
    tensors the model does not have; ``shape_mismatched``: ``(name, shape in file, shape in model)``
    of tensors present in both but not loaded.
    """

    path: Path
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)

    @property
    def skipped(self) -> List[str]:
        """Model tensors not initialised from the file (missing or of another shape)."""
        return sorted(self.missing + [name for name, _, _ in self.shape_mismatched])

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded from {self.path}"]
        if self.shape_mismatched:
            parts.append(f"{len(self.shape_mismatched)} of another shape, not loaded: " + ", ".join(
                f"{name} (file {list(a)}, model {list(b)})" for name, a, b in self.shape_mismatched[:5]))
        if self.missing:
            parts.append(f"{len(self.missing)} missing from the file: {', '.join(self.missing[:5])}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} not in the model, ignored: {', '.join(self.unexpected[:5])}")
        return "; ".join(parts)


class Trainer(TrainerBase):
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
        num_workers: data-loader worker processes; None picks
            :func:`blendmask.data.loader.default_num_workers` for ``device``.
        show_progress: show a tqdm bar on rank 0.
        extra_state: more entries for every checkpoint (e.g. ``class_names``); plain data only.
        hooks: more hooks (:class:`blendmask.engine.train_loop.HookBase`), run after the default ones.
        history_size: how many records of the run (step metrics, evaluations) stay in memory;
            ``TrainResult.losses`` holds the step records among them. The metrics file has all.

    State that hooks read: that of :class:`~blendmask.engine.train_loop.TrainerBase`, and
    ``optimizer``, ``scheduler``, ``cfg``, ``solver``.
    """

    def __init__(self, *, model: nn.Module, cfg, train_dataset: Dataset, output_dir, evaluate: Optional[EvaluateFn] = None,
                 device: Optional[torch.device] = None, seed: int = 0, num_workers: Optional[int] = 0, show_progress: bool = True,
                 extra_state: Optional[Dict[str, Any]] = None, hooks: Iterable[HookBase] = (), history_size: int = 1000):
        super().__init__()
        self.cfg = cfg
        self.solver = cfg.solver
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.num_workers = num_workers
        self.train_dataset = train_dataset
        self.extra_state = dict(extra_state or {})
        self.history_size = history_size

        world_size = get_world_size()
        if self.solver.ims_per_batch % world_size:
            raise ValueError(f"solver.ims_per_batch={self.solver.ims_per_batch} is not divisible by the "
                             f"world size {world_size}")
        if self.solver.max_iter <= 0:
            raise ValueError(f"solver.max_iter must be > 0, got {self.solver.max_iter}")
        if self.solver.ims_per_batch > len(train_dataset):
            raise ValueError(f"solver.ims_per_batch={self.solver.ims_per_batch} is larger than the training set "
                             f"({len(train_dataset)} images): choose at most {len(train_dataset)}")
        self.batch_per_rank = self.solver.ims_per_batch // world_size
        self.max_iter = self.solver.max_iter

        model = convert_sync_batchnorm(model.to(self.device), self.device)
        if self.solver.channels_last:
            from ..models.memory_format import use_channels_last  # deferred: the models package is the larger import

            use_channels_last(model)
        self.model = model
        self.optimizer = build_optimizer(model, self.solver)
        self.scheduler = build_lr_scheduler(self.optimizer, self.solver)
        self.amp_dtype = _autocast_dtype(self.solver, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if is_distributed():
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        else:
            self.train_model = model
        self.checkpointer = Checkpointer(self.output_dir)
        self.start_iter = 0
        self.iter = 0
        self.error: Optional[BaseException] = None
        self.storage = RunRecords(history_size)
        self.result = TrainResult(output_dir=self.output_dir, iteration=0)
        self._resumed_rng: Optional[Dict[str, Any]] = None
        self.register_hooks(default_hooks(solver=self.solver, output_dir=self.output_dir, evaluate=evaluate,
                                          show_progress=show_progress))
        self.register_hooks(hooks)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self, rng: Dict[str, Any]) -> Dict[str, Any]:
        """The checkpoint of the current iteration; ``rng`` from :func:`capture_all_ranks_rng_state`."""
        return {
            **self.extra_state,
            "model": self.model.state_dict(),
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iter,
            "data_order": {"seed": self.seed, "ims_per_batch": self.solver.ims_per_batch},
            "rng": rng,
        }

    def save_checkpoint(self, name: str) -> Optional[Path]:
        """Write ``output_dir/NAME.pth`` at the current iteration (rank 0 writes; every rank must
        call this, since the RNG states of all ranks are gathered). Returns the path on rank 0."""
        rng = capture_all_ranks_rng_state()
        path = self.checkpointer.save(name, self.checkpoint_state(rng)) if is_main_process() else None
        barrier()
        return path

    def resume(self) -> bool:
        """Load the newest checkpoint in ``output_dir``. Returns False if there is none.

        Restored: the model, the optimiser's state (momentum), the scheduler's and scaler's
        counters, the iteration, the data order and this rank's RNG state (each rank its own).
        Not restored: hyperparameters. The current config's solver settings apply from the
        resume point on (those that differ from the checkpoint's are logged), see
        :mod:`blendmask.engine.solver`. Refused (``ValueError``): another ``solver.ims_per_batch``
        (the data order depends on it) or another number of processes (the RNG states do).
        """
        path = self.checkpointer.last_checkpoint()
        if path is None:
            return False
        data = load_checkpoint(path)
        if data["data_order"]["ims_per_batch"] != self.solver.ims_per_batch:
            raise ValueError(f"cannot resume {path}: it was trained with solver.ims_per_batch="
                             f"{data['data_order']['ims_per_batch']}, the config now says {self.solver.ims_per_batch}")
        rng = rng_state_of_this_rank(data["rng"], source=path)
        self.model.load_state_dict(data["model"])
        load_solver_state(self.optimizer, self.scheduler, optimizer_state=data["optimizer"],
                          scheduler_state=data["scheduler"])
        if "scaler" in data:
            self.scaler.load_state_dict(data["scaler"])
        self.start_iter = int(data["iteration"])
        self.seed = int(data["data_order"]["seed"])
        self._resumed_rng = rng
        changed = changed_solver_keys(data.get("config", {}).get("solver", {}), self.solver)
        logger.info("resumed from %s at iteration %d", path, self.start_iter)
        if changed:
            logger.warning("the config changes the solver of %s; the new values apply from iteration %d on: %s",
                           path, self.start_iter + 1, ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))
        return True

    def load_matching_weights(self, path) -> MatchingWeightsReport:
        """Initialise the model from a weights file, leniently: tensors whose name or shape does not
        match (e.g. a classifier for another number of classes) are skipped, and reported.

        For a file that must match exactly use :func:`blendmask.models.load_weights` (strict).
        Returns the report and logs it (a warning when something was skipped).
        """
        state = load_checkpoint(path)["model"]
        own = self.model.state_dict()
        report = MatchingWeightsReport(path=Path(path))
        for name, value in state.items():
            if name not in own:
                report.unexpected.append(name)
            elif tuple(own[name].shape) != tuple(value.shape):
                report.shape_mismatched.append((name, tuple(value.shape), tuple(own[name].shape)))
            else:
                report.loaded.append(name)
        report.missing = sorted(set(own) - set(state))
        report.unexpected.sort()
        report.shape_mismatched.sort()
        self.model.load_state_dict({name: state[name] for name in report.loaded}, strict=False)
        (logger.warning if report.skipped or report.unexpected else logger.info)("%s", report.summary())
        return report

    # ------------------------------------------------------------------ loop
    def _data_loader(self) -> DataLoader:
        from blendmask.data import build_train_loader

        return build_train_loader(self.train_dataset, batch_size=self.batch_per_rank, num_workers=self.num_workers,
                                  seed=self.seed, start_iter=self.start_iter, device=self.device,
                                  sampler=self.cfg.dataloader.sampler,
                                  repeat_threshold=self.cfg.dataloader.repeat_threshold)

    def run_step(self) -> Dict[str, float]:
        """One optimisation step on the next batch. Returns its rank-averaged metrics
        (``loss_*``, ``loss_total``, ``lr``, ``time``, ``data_time``); raises
        :class:`NonFiniteLossError` before updating anything if the loss is NaN/inf."""
        from blendmask.data.loader import batch_to_device  # engine does not import data at import time

        start = time.perf_counter()
        images, targets = next(self._data_iter)
        images, targets = batch_to_device(images, targets, self.device)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss_dict = self.train_model(images, targets)
        total = sum(loss_dict.values())
        metrics = {k: float(v.detach()) for k, v in loss_dict.items()}
        metrics["loss_total"] = float(total.detach())
        metrics = reduce_metrics(metrics)
        if not math.isfinite(metrics["loss_total"]):
            raise NonFiniteLossError(
                "training stopped: the loss became non-finite ("
                + ", ".join(f"{k}={v}" for k, v in sorted(metrics.items()))
                + "). " + DIVERGENCE_ADVICE
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
        metrics.update(time=time.perf_counter() - start, data_time=data_time)
        return metrics

    def train(self) -> TrainResult:
        """Run from ``start_iter`` to ``solver.max_iter``: ``before_train`` hooks, then for every
        iteration ``before_step`` hooks, :meth:`run_step`, ``after_step`` hooks, and finally the
        ``after_train`` hooks (also on failure, with ``self.error`` set).

        Raises :class:`NonFiniteLossError` (after the hooks have logged it) if the loss becomes
        NaN/inf; the last good checkpoint is left untouched and named in the message.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.iter = self.start_iter
        self.error = None
        self.storage = RunRecords(self.history_size)
        self.result = TrainResult(output_dir=self.output_dir, iteration=self.iter)
        self.train_model.train()
        try:
            self._call_hooks("before_train")
            if self._resumed_rng is not None:
                restore_rng_state(self._resumed_rng)
            self._data_iter = iter(self._data_loader())
            while self.iter < self.max_iter:
                self._call_hooks("before_step")
                metrics = self.run_step()
                self.iter += 1
                self.storage.put({"iteration": self.iter, **metrics})
                self._call_hooks("after_step")
        except NonFiniteLossError as exc:
            self.error = exc
            self.storage.put({"iteration": self.iter + 1, "error": str(exc)})
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM turned into one by the command line
            self.error = exc
            last = self.checkpointer.last_checkpoint()
            exc.add_note(f"training stopped at iteration {self.iter}; "
                         + (f"the last checkpoint is {last} (continue with --resume)" if last
                            else "no checkpoint had been written yet"))
            raise
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._data_iter = None
            self._call_hooks("after_train")
        self.result.iteration = self.iter
        self.result.losses = self.storage.steps()
        if self.error is not None:
            last = self.checkpointer.last_checkpoint()
            note = f" The last good checkpoint is {last}." if last else " No checkpoint had been written yet."
            raise NonFiniteLossError(f"{self.error}{note}") from None
        return self.result
