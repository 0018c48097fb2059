"""Schedules that make no sense are refused naming the key; steps a run does not reach are logged."""
import pytest
import torch

from blendmask.config import get_config
from blendmask.engine.solver import build_lr_scheduler


def _scheduler(**solver):
    cfg = get_config("lite_mobilenet_v2", {f"solver.{k}": v for k, v in solver.items()})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    return build_lr_scheduler(optimizer, cfg.solver)


@pytest.mark.parametrize("steps, needle", [((-3,), "iterations >= 1"), ((0, 10), "iterations >= 1"),
                                           ((20, 10), "strictly increasing"), ((10, 10), "strictly increasing")])
def test_bad_steps_are_refused_naming_the_key(steps, needle):
    with pytest.raises(ValueError, match=f"solver.steps must be {needle}, got {list(steps)}".replace("[", r"\[")):
        _scheduler(steps=steps, max_iter=100)


def test_steps_beyond_max_iter_are_logged(caplog):
    _scheduler(steps=(50, 150), max_iter=100)
    assert "solver.steps [150] lie beyond solver.max_iter=100" in caplog.text


def test_a_sensible_schedule_is_accepted(caplog):
    scheduler = _scheduler(steps=(50, 80), max_iter=100)
    assert scheduler.steps == (50, 80) and "beyond" not in caplog.text
