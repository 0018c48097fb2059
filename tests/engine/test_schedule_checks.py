"""Schedules that make no sense are refused naming the key: steps below 1, unsorted, or beyond max_iter."""
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


@pytest.mark.parametrize("steps, first_beyond", [((50, 150), 150), ((101,), 101), ((200, 300), 200)])
def test_steps_beyond_max_iter_are_refused_naming_both_values(steps, first_beyond):
    message = (f"solver.steps {list(steps)} go beyond solver.max_iter=100 (step {first_beyond} is never reached): "
               "lower the steps, or set solver.steps=() for no decay")
    with pytest.raises(ValueError) as caught:
        _scheduler(steps=steps, max_iter=100)
    assert str(caught.value) == message


def test_a_step_at_max_iter_and_no_steps_are_accepted():
    assert _scheduler(steps=(50, 100), max_iter=100).steps == (50, 100)
    assert _scheduler(steps=(), max_iter=100).steps == ()


def test_a_sensible_schedule_is_accepted():
    assert _scheduler(steps=(50, 80), max_iter=100).steps == (50, 80)
