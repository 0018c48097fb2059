"""The base classes of training: what a run produces, its records, the hooks and the trainer
they are registered with.

The imports of the engine run one way: this module, then :mod:`blendmask.engine.hooks` (the
hooks, built on :class:`HookBase`), then :mod:`blendmask.engine.trainer` (the training loop,
a :class:`TrainerBase` that registers the default hooks).

:class:`blendmask.engine.Trainer` calls every registered hook, in registration order, at four
points::

    before_train()                      once, before the first step (after resume)
    before_step() / after_step()        around every step; ``trainer.iter`` is the number of
                                        completed iterations (1-based in ``after_step``)
    after_train()                       once, also when training fails: ``trainer.error`` is then
                                        the exception (``None`` on success)

A hook reaches its trainer through ``self.trainer``, a weak proxy (:func:`weakref.proxy`): a
hook kept after its trainer is gone does not keep the model, the optimiser and the data alive.
"""
from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from torch import nn

__all__ = ["EvaluateFn", "HookBase", "RunRecords", "TrainResult", "TrainerBase"]

EvaluateFn = Callable[[nn.Module], Dict[str, Any]]


@dataclass
class TrainResult:
    """What a training run produced (filled in by the hooks)."""

    output_dir: Path
    iteration: int
    final_checkpoint: Optional[Path] = None
    metrics_path: Optional[Path] = None
    loss_curve_path: Optional[Path] = None
    losses: List[Dict[str, float]] = field(default_factory=list)  # the last step records of this run
    eval_results: Dict[str, Any] = field(default_factory=dict)  # last evaluation


class HookBase:
    """Base class of training hooks: override any of the four methods (module doc).

    ``self.trainer`` (a weak proxy of the :class:`TrainerBase`) is set when the hook is registered.
    """

    trainer: "TrainerBase"

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class RunRecords:
    """The records of one run, in order, with the last ``window`` kept in memory.

    A record is a JSON-able dict with an ``iteration``: step metrics (``loss_*``, ``lr``, ``time``,
    ``data_time``), an evaluation (``eval``), or the error that stopped the run (``error``).
    Writers remember a cursor and fetch what is new with :meth:`since`.
    """

    def __init__(self, window: int = 1000):
        if window <= 0:
            raise ValueError(f"RunRecords: window must be positive, got {window}")
        self._records: deque = deque(maxlen=window)
        self._count = 0  # records put so far; the index of the next one

    def put(self, record: Dict[str, Any]) -> None:
        self._records.append(record)
        self._count += 1

    def since(self, cursor: int) -> Tuple[List[Dict[str, Any]], int]:
        """``(records put at index >= cursor, new cursor)``. Raises ``RuntimeError`` if some of them
        have already left the window (a writer that waited longer than ``window`` records)."""
        first_kept = self._count - len(self._records)
        if cursor < first_kept:
            raise RuntimeError(f"RunRecords: records {cursor}..{first_kept - 1} left the window of "
                               f"{self._records.maxlen} before they were written")
        return list(self._records)[cursor - first_kept:], self._count

    def steps(self) -> List[Dict[str, Any]]:
        """The step records still in the window, oldest first."""
        return [r for r in self._records if "loss_total" in r]

    def latest_step(self) -> Optional[Dict[str, Any]]:
        return next((r for r in reversed(self._records) if "loss_total" in r), None)




class TrainerBase:
    """The part of a trainer that hooks see, and the list of its hooks.

    State that hooks read: ``iter`` (completed iterations), ``start_iter``, ``max_iter``,
    ``storage`` (the :class:`RunRecords` of the current run), ``result`` (the
    :class:`TrainResult` being filled), ``error`` (the exception that ended the run, or None),
    ``model``, ``output_dir``; and :meth:`save_checkpoint`.
    """

    iter: int
    start_iter: int
    max_iter: int
    storage: RunRecords
    result: TrainResult
    error: Optional[BaseException]
    model: nn.Module
    output_dir: Path

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []

    @property
    def hooks(self) -> List[HookBase]:
        """The registered hooks, in the order they are called."""
        return list(self._hooks)

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        """Append ``hooks`` (called after those already registered) and give them a weak proxy of this trainer."""
        for hook in hooks:
            if not isinstance(hook, HookBase):
                raise TypeError(f"Trainer.register_hooks: {hook!r} is not a HookBase")
            hook.trainer = weakref.proxy(self)
            self._hooks.append(hook)

    def _call_hooks(self, stage: str) -> None:
        for hook in self._hooks:
            getattr(hook, stage)()

    def save_checkpoint(self, name: str) -> Optional[Path]:
        """Write ``output_dir/NAME.pth`` at the current iteration; returns its path where it was written."""
        raise NotImplementedError
