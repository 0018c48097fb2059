"""Training loop, solver and resume, on stand-in model/data (tests/_engine_utils.py)."""
import json
import shutil

import pytest
import torch

from blendmask.engine import NonFiniteLossError, Trainer, load_checkpoint
from blendmask.engine.solver import build_lr_scheduler, build_optimizer, lr_factor_at

from _engine_utils import TinyDetector, TinyShapes, tiny_cfg


def _trainer(tmp_path, cfg, *, model_seed=0, model=None, **kwargs):
    torch.manual_seed(model_seed)
    return Trainer(model=model or TinyDetector(), cfg=cfg, train_dataset=TinyShapes(), output_dir=tmp_path,
                   show_progress=False, **kwargs)


def test_lr_schedule_warmup_then_steps():
    cfg = tiny_cfg(base_lr=0.1, warmup_iters=4, warmup_factor=0.2, steps=(6, 8), gamma=0.5)
    optimizer = build_optimizer(TinyDetector(), cfg.solver)
    scheduler = build_lr_scheduler(optimizer, cfg.solver)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1 * f for f in (0.2, 0.4, 0.6, 0.8, 1, 1, 0.5, 0.5, 0.25, 0.25)]
    assert lrs == pytest.approx(expected)
    assert lr_factor_at(0, warmup_iters=0, warmup_factor=0.1, steps=(), gamma=0.1) == 1.0


def test_optimizer_excludes_norm_and_bias_from_weight_decay():
    cfg = tiny_cfg()
    optimizer = build_optimizer(TinyDetector(), cfg.solver)
    decays = {p.ndim: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays[1] == 0.0 and decays[2] == cfg.solver.weight_decay and decays[4] == cfg.solver.weight_decay
    with pytest.raises(ValueError, match="base_lr"):
        build_optimizer(TinyDetector(), tiny_cfg(base_lr=0.0).solver)


def test_short_run_lowers_loss_and_writes_artifacts(tmp_path):
    result = _trainer(tmp_path, tiny_cfg(max_iter=30, checkpoint_period=10, steps=(25,))).train()
    totals = [m["loss_total"] for m in result.losses]
    assert len(totals) == 30
    assert sum(totals[-5:]) / 5 < 0.6 * sum(totals[:5]) / 5
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 31))
    assert {"loss_box", "loss_cls", "loss_total", "lr", "time"} <= set(records[0])
    assert (tmp_path / "loss_curve.png").stat().st_size > 1000
    assert {p.name for p in tmp_path.glob("*.pth")} == {"model_0000010.pth", "model_0000020.pth", "model_final.pth"}
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = load_checkpoint(result.final_checkpoint)
    assert final["iteration"] == 30 and final["config"]["solver"]["max_iter"] == 30


def test_resume_gives_the_same_next_losses_as_an_uninterrupted_run(tmp_path):
    cfg = tiny_cfg(max_iter=12, checkpoint_period=6, steps=(8,))
    full = _trainer(tmp_path / "full", cfg).train()

    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copy(tmp_path / "full" / "model_0000006.pth", resumed_dir)
    (resumed_dir / "last_checkpoint").write_text("model_0000006.pth")
    # A different initialisation and a perturbed global RNG: resume must overwrite both.
    trainer = _trainer(resumed_dir, cfg, model_seed=123)
    torch.manual_seed(999)
    assert trainer.resume() and trainer.start_iter == 6
    resumed = trainer.train()

    assert [m["iteration"] for m in resumed.losses] == list(range(7, 13))
    assert [m["loss_total"] for m in resumed.losses] == [m["loss_total"] for m in full.losses[6:]]
    assert [m["lr"] for m in resumed.losses] == [m["lr"] for m in full.losses[6:]]
    a, b = load_checkpoint(full.final_checkpoint)["model"], load_checkpoint(resumed.final_checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    trainer = _trainer(tmp_path, tiny_cfg())
    assert not trainer.resume() and trainer.start_iter == 0


class _NaNAfter(TinyDetector):
    def __init__(self, bad_call):
        super().__init__()
        self.calls, self.bad_call = 0, bad_call

    def forward(self, images, targets=None):
        losses = super().forward(images, targets)
        self.calls += 1
        if self.calls >= self.bad_call:
            losses["loss_box"] = losses["loss_box"] * float("nan")
        return losses


def test_nan_loss_stops_clearly_and_keeps_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, tiny_cfg(checkpoint_period=2), model=_NaNAfter(bad_call=6))
    with pytest.raises(NonFiniteLossError, match=r"non-finite.*loss_box=nan.*model_0000004\.pth"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    assert load_checkpoint(tmp_path / "model_0000004.pth")["iteration"] == 4
    assert not (tmp_path / "model_final.pth").exists()
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["iteration"] == 6 and "non-finite" in last["error"]


def test_periodic_evaluation_and_grad_clipping(tmp_path):
    calls = []

    def evaluate(model):
        assert not model.training
        calls.append(True)
        return {"segm": {"AP": 0.5}}

    cfg = tiny_cfg(max_iter=6, eval_period=3, clip_grad_norm=0.01)
    result = _trainer(tmp_path, cfg, evaluate=evaluate).train()
    assert len(calls) == 2  # at iteration 3 and at the end (iteration 6)
    assert result.eval_results == {"segm": {"AP": 0.5}}
    evals = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert [e["iteration"] for e in evals] == [3, 6]


def test_bad_solver_settings_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="max_iter"):
        _trainer(tmp_path, tiny_cfg(max_iter=0))
    with pytest.raises(ValueError, match="steps"):
        _trainer(tmp_path, tiny_cfg(steps=(10, 5)))


def test_real_lite_model_short_run_lowers_the_loss(tmp_path):
    """The real BlendMask lite model on a tiny synthetic set: tens of iterations lower the loss."""
    from blendmask.config import get_config
    from blendmask.data import CocoInstanceDataset, make_shapes, resolve_split
    from blendmask.models import build_model

    data = make_shapes(tmp_path / "data", train=8, val=0, size=96, seed=0)
    dataset = CocoInstanceDataset(*resolve_split(data, "train"))
    cfg = get_config("lite_mobilenet_v2", {
        "model.num_classes": dataset.num_classes, "input.min_size_train": (96,), "input.max_size_train": 96,
        "solver.ims_per_batch": 2, "solver.base_lr": 0.005, "solver.warmup_iters": 10, "solver.steps": (100,),
        "solver.max_iter": 30, "solver.checkpoint_period": 0})
    torch.manual_seed(0)
    model = build_model(cfg, weights_backbone="imagenet")
    result = Trainer(model=model, cfg=cfg, train_dataset=dataset, output_dir=tmp_path / "out",
                     show_progress=False).train()
    totals = [m["loss_total"] for m in result.losses]
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < 0.7 * first, (first, last)
