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
