"""Training hooks: the parts of a run around the optimisation step.

The hooks are built on :class:`~blendmask.engine.train_loop.HookBase` (which says when each
method is called) and see the trainer through :class:`~blendmask.engine.train_loop.TrainerBase`.

Hooks talk to each other only through the trainer: ``trainer.storage`` (the run's records, see
:class:`RunRecords`) and ``trainer.result`` (the :class:`TrainResult` the run returns). Every
rank runs every hook; a hook that writes files does so on the main process only, and a hook that
makes every rank wait (checkpointing, evaluation) does it on every rank.

The default hooks, in order: :class:`ProgressBar`, :class:`PeriodicCheckpoint`,
:class:`PeriodicEvaluation` (with an ``evaluate`` function), :class:`JSONMetricsWriter`,
:class:`TensorBoardWriter` (only when ``torch.utils.tensorboard`` is importable),
:class:`LossSpikeWarning` and :class:`LossCurvePlot`. Add your own with ``Trainer(..., hooks=[...])`` or
``trainer.register_hooks([...])``; they run after the defaults.
"""
from __future__ import annotations

import json
import logging
import math
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from ..distributed import barrier, is_main_process
from ..serialization import atomic_write
from .checkpoint import preserved_rng_state
from .train_loop import EvaluateFn, HookBase

__all__ = [
    "ProgressBar",
    "PeriodicCheckpoint",
    "PeriodicEvaluation",
    "JSONMetricsWriter",
    "TensorBoardWriter",
    "LossSpikeWarning",
    "LossCurvePlot",
    "tensorboard_available",
    "json_safe",
    "METRICS_FILE",
    "default_hooks",
]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"

#: What to try when training diverges (a NaN/inf loss, or a loss spike).
DIVERGENCE_ADVICE = "Try solver.clip_grad_norm (e.g. 5), a lower solver.base_lr or a longer solver.warmup_iters."
def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float (at any depth of dicts/lists) replaced by ``None``, so
    that ``json.dumps`` writes ``null`` instead of the non-JSON ``NaN``/``Infinity``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class ProgressBar(HookBase):
    """A tqdm bar with the loss and the learning rate, on the main process."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bar = None

    def before_train(self) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=self.trainer.max_iter, initial=self.trainer.iter, desc="train", dynamic_ncols=True,
                         disable=not (self.enabled and is_main_process()))

    def after_step(self) -> None:
        step = self.trainer.storage.latest_step()
        self._bar.set_postfix(loss=f"{step['loss_total']:.3f}", lr=f"{step['lr']:.2e}", refresh=False)
        self._bar.update(1)

    def after_train(self) -> None:
        if self._bar is not None:
            self._bar.close()


class PeriodicCheckpoint(HookBase):
    """``model_XXXXXXX`` every ``period`` iterations (0: never) before the last, and ``model_final``
    at the end of a successful run (``trainer.result.final_checkpoint``)."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and it % self.period == 0 and it < self.trainer.max_iter:
            self.trainer.save_checkpoint(f"model_{it:07d}")

    def after_train(self) -> None:
        if self.trainer.error is None:
            self.trainer.result.final_checkpoint = self.trainer.save_checkpoint("model_final")


class PeriodicEvaluation(HookBase):
    """``evaluate(model)`` on the main process every ``period`` iterations (0: never) before the
    last, and at the end of a successful run. The model is in eval mode under ``no_grad``; the RNG
    states are preserved, so evaluating does not change the training that follows (and resumed
    runs stay exact). Each result is put in the records as ``{"iteration", "eval"}``."""

    def __init__(self, evaluate: EvaluateFn, period: int):
        self.evaluate = evaluate
        self.period = period

    def _run(self) -> None:
        trainer = self.trainer
        if is_main_process():
            trainer.model.eval()
            try:
                with torch.no_grad(), preserved_rng_state():
                    results = self.evaluate(trainer.model)
            finally:
                trainer.model.train()
            trainer.storage.put({"iteration": trainer.iter, "eval": results})
            trainer.result.eval_results = results
        barrier()

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and it % self.period == 0 and it < self.trainer.max_iter:
            self._run()

    def after_train(self) -> None:
        if self.trainer.error is None:
            self._run()


def _iteration_of(line: str) -> Optional[int]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:  # e.g. a line cut short by a killed run
        return None
    return record.get("iteration") if isinstance(record, dict) else None


class _RecordWriter(HookBase):
    """A hook that hands the storage's new records to ``_write`` after every step and at the end,
    then ``_close``s its sink; the sink (``self._sink``) exists on the main process only."""

    def __init__(self):
        self._sink = None
        self._cursor = 0

    def _write(self, records: List[Dict[str, Any]]) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        self._sink.close()

    def _write_new(self) -> None:
        records, self._cursor = self.trainer.storage.since(self._cursor)
        if self._sink is not None:
            self._write(records)

    def after_step(self) -> None:
        self._write_new()

    def after_train(self) -> None:
        try:
            self._write_new()
        finally:
            if self._sink is not None:
                self._close()
                self._sink = None


class JSONMetricsWriter(_RecordWriter):
    """Every record as one JSON line in ``output_dir/metrics.jsonl``, on the main process, flushed
    after every step. Non-finite floats are written as ``null`` (valid JSON).

    A fresh run starts a new file. A resumed run first drops the lines after its start iteration
    (written by the interrupted run after its last checkpoint, and about to be redone) and any
    line a kill cut short, then appends: every iteration appears once.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)

    def before_train(self) -> None:
        trainer = self.trainer
        trainer.result.metrics_path = self.path
        self._cursor = 0
        if not is_main_process():
            return
        if trainer.iter > 0 and self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if (it := _iteration_of(line)) is not None and it <= trainer.iter]
            atomic_write(self.path, lambda handle: handle.write("".join(f"{line}\n" for line in kept).encode()))
        self._sink = open(self.path, "a" if trainer.iter > 0 else "w", encoding="utf-8")

    def _write(self, records: List[Dict[str, Any]]) -> None:
        for record in records:
            self._sink.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self._sink.flush()


def tensorboard_available() -> bool:
    """Whether ``torch.utils.tensorboard`` (which needs the ``tensorboard`` package) imports."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _scalars(prefix: str, value: Any) -> Iterable[Tuple[str, float]]:
    """``(tag, number)`` for every finite number in a (nested) record, tags joined with ``/``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _scalars(f"{prefix}/{key}" if prefix else str(key), item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        yield prefix, float(value)


class TensorBoardWriter(_RecordWriter):
    """TensorBoard event files in ``log_dir`` (main process): every number of every record as a
    scalar at its iteration (``loss_total``, ``lr``, ``eval/segm/AP``...). A resumed run purges
    the events after its start iteration. Needs the ``tensorboard`` package; ``writer_factory``
    (``log_dir, purge_step -> writer`` with ``add_scalar``/``flush``/``close``) replaces
    ``SummaryWriter``."""

    def __init__(self, log_dir: Path, writer_factory: Optional[Callable[..., Any]] = None):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.writer_factory = writer_factory

    def before_train(self) -> None:
        self._cursor = 0
        if not is_main_process():
            return
        factory = self.writer_factory
        if factory is None:
            from torch.utils.tensorboard import SummaryWriter as factory
        purge_step = self.trainer.iter + 1 if self.trainer.iter > 0 else None
        self._sink = factory(log_dir=str(self.log_dir), purge_step=purge_step)

    def _write(self, records: List[Dict[str, Any]]) -> None:
        for record in records:
            step = int(record["iteration"])
            for tag, number in _scalars("", {k: v for k, v in record.items() if k != "iteration"}):
                self._sink.add_scalar(tag, number, step)
        self._sink.flush()


class LossSpikeWarning(HookBase):
    """Log a warning (once per run) when the total loss jumps to ``factor`` times its median over
    the last ``window`` iterations: a finite loss spike can leave a model with no detection at all
    without ever becoming NaN (which stops the run). Watched once ``min_history`` iterations of the
    run are recorded."""

    def __init__(self, factor: float = 10.0, window: int = 50, min_history: int = 20):
        self.factor, self.min_history = factor, min_history
        self._history: deque = deque(maxlen=window)
        self.warned_at: Optional[int] = None

    def before_train(self) -> None:
        self._history.clear()
        self.warned_at = None

    def after_step(self) -> None:
        loss = self.trainer.storage.latest_step()["loss_total"]
        if len(self._history) >= self.min_history and self.warned_at is None:
            median = sorted(self._history)[len(self._history) // 2]
            if loss > self.factor * median:
                self.warned_at = self.trainer.iter
                if is_main_process():  # the metrics are rank-averaged: every rank sees the same spike
                    logger.warning(
                        "loss_total %.4g at iteration %d is %.0fx its median (%.4g) over the last %d iterations: "
                        "training may be diverging (a model can end with no detection without a NaN). %s",
                        loss, self.trainer.iter, loss / median, median, len(self._history), DIVERGENCE_ADVICE)
        self._history.append(loss)


class LossCurvePlot(HookBase):
    """At the end of a successful run, ``png_path`` from the metrics file (main process):
    one panel per loss term and the learning rate (``trainer.result.loss_curve_path``).
    Reads the file, so the whole run is plotted whatever the in-memory window holds."""

    def __init__(self, png_path: Path):
        self.png_path = Path(png_path)

    def after_train(self) -> None:
        metrics_path = self.trainer.result.metrics_path
        if self.trainer.error is None and is_main_process() and metrics_path is not None:
            self.trainer.result.loss_curve_path = plot_loss_curve(metrics_path, self.png_path)


def plot_loss_curve(metrics_path: Path, png_path: Path) -> Optional[Path]:
    """Plot the loss terms and the learning rate of a ``metrics.jsonl`` file to a PNG (one panel each)."""
    from blendmask.visualize import plot_curves

    with open(metrics_path, encoding="utf-8") as handle:
        first = next((json.loads(line) for line in handle if '"loss_total"' in line), None)
    if first is None:
        return None
    keys = ["loss_total"] + sorted(k for k in first if k.startswith("loss") and k != "loss_total") + ["lr"]
    return Path(plot_curves(metrics_path, png_path, keys))


def default_hooks(*, solver, output_dir: Path, evaluate: Optional[EvaluateFn], show_progress: bool) -> List[HookBase]:
    """The hooks every :class:`~blendmask.engine.Trainer` starts with (module doc): periods from
    ``solver`` (a :class:`blendmask.config.SolverConfig`), files in ``output_dir``, evaluation with
    ``evaluate`` (none when it is None), a progress bar when ``show_progress``."""
    out = Path(output_dir)
    hooks: List[HookBase] = [ProgressBar(show_progress), PeriodicCheckpoint(solver.checkpoint_period)]
    if evaluate is not None:
        hooks.append(PeriodicEvaluation(evaluate, solver.eval_period))
    hooks.append(JSONMetricsWriter(out / METRICS_FILE))
    if tensorboard_available():
        hooks.append(TensorBoardWriter(out / "tensorboard"))
    hooks.append(LossSpikeWarning())
    hooks.append(LossCurvePlot(out / "loss_curve.png"))
    return hooks
