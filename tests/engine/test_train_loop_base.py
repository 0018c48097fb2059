"""The engine's base classes: hooks see their trainer through a weak proxy, and the default hooks
are built from values (no trainer needed)."""
from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import pytest

from blendmask.engine.hooks import (
    JSONMetricsWriter,
    LossCurvePlot,
    LossSpikeWarning,
    PeriodicCheckpoint,
    PeriodicEvaluation,
    ProgressBar,
    default_hooks,
)
from blendmask.engine.train_loop import HookBase, TrainerBase


class _CountingTrainer(TrainerBase):
    def __init__(self):
        super().__init__()
        self.iter = 0


class _ReadIter(HookBase):
    def __init__(self):
        self.seen = []

    def after_step(self):
        self.seen.append(self.trainer.iter)


def test_a_hook_reads_its_trainer_and_does_not_keep_it_alive():
    trainer, hook = _CountingTrainer(), _ReadIter()
    trainer.register_hooks([hook])
    for trainer.iter in (1, 2):
        trainer._call_hooks("after_step")
    assert hook.seen == [1, 2] and trainer.hooks == [hook]
    alive = weakref.ref(trainer)
    del trainer
    gc.collect()
    assert alive() is None  # the hook's reference was weak
    with pytest.raises(ReferenceError):
        hook.trainer.iter


def test_only_hooks_register():
    with pytest.raises(TypeError, match="is not a HookBase"):
        _CountingTrainer().register_hooks([object()])


def test_the_default_hooks_come_from_values(tmp_path):
    solver = SimpleNamespace(checkpoint_period=5, eval_period=3)
    hooks = default_hooks(solver=solver, output_dir=tmp_path, evaluate=lambda model: {}, show_progress=False)
    kinds = [type(h) for h in hooks]
    assert kinds[:4] == [ProgressBar, PeriodicCheckpoint, PeriodicEvaluation, JSONMetricsWriter]
    assert kinds[-1] is LossCurvePlot
    assert hooks[1].period == 5 and hooks[2].period == 3 and hooks[3].path == tmp_path / "metrics.jsonl"
    without_eval = default_hooks(solver=solver, output_dir=tmp_path, evaluate=None, show_progress=True)
    assert PeriodicEvaluation not in [type(h) for h in without_eval] and without_eval[0].enabled


class _StepTrainer(TrainerBase):
    """A trainer whose only record is the latest step's total loss."""

    def __init__(self):
        super().__init__()
        self.iter, self.loss = 0, 0.0
        self.storage = SimpleNamespace(latest_step=lambda: {"loss_total": self.loss})

    def step(self, loss):
        self.iter, self.loss = self.iter + 1, loss
        self._call_hooks("after_step")


def _losses_seen(losses):
    trainer, hook = _StepTrainer(), LossSpikeWarning(factor=10.0, window=50, min_history=20)
    trainer.register_hooks([hook])
    trainer._call_hooks("before_train")
    for loss in losses:
        trainer.step(loss)
    return hook


def test_a_loss_spike_is_warned_about_once_with_the_remedy(caplog):
    with caplog.at_level("WARNING", logger="blendmask.engine.hooks"):
        hook = _losses_seen([3.0, 2.5] * 15 + [24.0, 40.0, 80.0, 1.0])  # 24 < 10 x the median 3.0
    assert hook.warned_at == 32
    assert len(caplog.records) == 1 and "solver.clip_grad_norm" in caplog.text and "iteration 32" in caplog.text


def test_a_falling_or_noisy_loss_and_an_early_spike_are_not_warned_about(caplog):
    with caplog.at_level("WARNING", logger="blendmask.engine.hooks"):
        falling = _losses_seen([4.0 * 0.97 ** i for i in range(200)])
        noisy = _losses_seen([1.0, 5.0, 0.5, 8.0] * 30)
        early = _losses_seen([1.0] * 5 + [50.0] + [1.0] * 30)  # before min_history: the first iterations vary
    assert falling.warned_at is None and noisy.warned_at is None and early.warned_at is None
    assert caplog.text == ""
