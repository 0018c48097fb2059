"""Training loop, solver and resume, on stand-in model/data (tests/helpers/engine_standins.py)."""
import json
import shutil

import pytest
import torch

from blendmask.engine import HookBase, NonFiniteLossError, Trainer, atomic_save, load_checkpoint
from blendmask.engine.hooks import TensorBoardWriter, tensorboard_available
from blendmask.engine.solver import build_lr_scheduler, build_optimizer, lr_factor_at

from tests.helpers.engine_standins import TinyDetector, TinyShapes, tiny_cfg


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


def _decays(model, solver_cfg):
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, solver_cfg)
    return {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}


def test_optimizer_decays_everything_but_normalisation_layers_like_detectron2():
    """detectron2's rule: every parameter decays with weight_decay, biases included, except
    normalisation layers' (weight_decay_norm); weight_decay_bias, when set, overrides every
    bias (the norm layers' too, as detectron2 applies it last)."""
    model = TinyDetector()
    model.head = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.GroupNorm(2, 8), torch.nn.LayerNorm(8))
    cfg = tiny_cfg()
    wd = cfg.solver.weight_decay
    assert cfg.solver.weight_decay_norm == 0.0 and cfg.solver.weight_decay_bias < 0  # the defaults
    decays = _decays(model, cfg.solver)
    norm_params = {"features.1.weight", "features.1.bias", "head.1.weight", "head.1.bias", "head.2.weight", "head.2.bias"}
    assert set(decays) == {n for n, _ in model.named_parameters()}
    assert {n: d for n, d in decays.items() if n in norm_params} == {n: 0.0 for n in norm_params}
    assert {n: d for n, d in decays.items() if n not in norm_params} == {n: wd for n in decays if n not in norm_params}
    assert decays["box.bias"] == decays["features.0.bias"] == wd  # biases decay
    # weight_decay_norm is read; weight_decay_bias overrides every bias
    cfg.solver.weight_decay_norm = 3e-5
    cfg.solver.weight_decay_bias = 7e-5
    decays = _decays(model, cfg.solver)
    assert decays["features.1.weight"] == decays["head.2.weight"] == 3e-5
    assert decays["features.1.bias"] == decays["box.bias"] == decays["head.0.bias"] == 7e-5
    assert decays["box.weight"] == decays["head.0.weight"] == wd
    with pytest.raises(ValueError, match="base_lr"):
        build_optimizer(TinyDetector(), tiny_cfg(base_lr=0.0).solver)
    cfg.solver.weight_decay_norm = -1.0
    with pytest.raises(ValueError, match="weight_decay_norm"):
        build_optimizer(model, cfg.solver)


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
        "solver.ims_per_batch": 2, "solver.base_lr": 0.005, "solver.warmup_iters": 10, "solver.steps": (),
        "solver.max_iter": 30, "solver.checkpoint_period": 0})
    torch.manual_seed(0)
    model = build_model(cfg, weights_backbone="imagenet")
    result = Trainer(model=model, cfg=cfg, train_dataset=dataset, output_dir=tmp_path / "out",
                     show_progress=False).train()
    totals = [m["loss_total"] for m in result.losses]
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def _strict_json(line):
    """``json.loads`` that refuses NaN/Infinity, as jq and JavaScript do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


def _start_from(checkpoint, out_dir):
    """An output dir whose newest checkpoint is a copy of ``checkpoint`` (as a killed run leaves it)."""
    out_dir.mkdir()
    shutil.copy(checkpoint, out_dir)
    (out_dir / "last_checkpoint").write_text(checkpoint.name)
    return out_dir


def test_resume_with_a_changed_schedule_applies_the_new_steps(tmp_path, caplog):
    """The steps and max_iter given on resume win over the checkpoint's (old solver state kept only counters)."""
    new = tiny_cfg(max_iter=12, checkpoint_period=6, steps=(9,))
    full = _trainer(tmp_path / "full", new).train()

    old = tiny_cfg(max_iter=20, checkpoint_period=6, steps=(15,))  # same lr as `new` up to iteration 8
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "old", old, hooks=[_StopAt(6)]).train()
    assert load_checkpoint(tmp_path / "old" / "model_0000006.pth")["iteration"] == 6

    trainer = _trainer(tmp_path / "old", new, model_seed=123)
    with caplog.at_level("WARNING", logger="blendmask.engine.trainer"):
        assert trainer.resume() and trainer.start_iter == 6
    assert "steps" in caplog.text and "(15,)" in caplog.text.replace("[15]", "(15,)") and "max_iter" in caplog.text
    resumed = trainer.train()
    assert [m["lr"] for m in resumed.losses] == pytest.approx([m["lr"] for m in full.losses[6:]])
    assert resumed.losses[-1]["lr"] == pytest.approx(0.3 * 0.1)  # decayed at 9, as the new config says
    assert [m["loss_total"] for m in resumed.losses] == [m["loss_total"] for m in full.losses[6:]]
    a, b = load_checkpoint(full.final_checkpoint)["model"], load_checkpoint(resumed.final_checkpoint)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_applies_a_new_base_lr_and_momentum(tmp_path):
    cfg = tiny_cfg(max_iter=6, checkpoint_period=3, warmup_iters=0, steps=())
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, cfg, hooks=[_StopAt(3)]).train()
    changed = tiny_cfg(max_iter=6, checkpoint_period=3, warmup_iters=0, steps=(), base_lr=0.05, momentum=0.5)
    trainer = _trainer(tmp_path, changed)
    assert trainer.resume()
    assert {g["lr"] for g in trainer.optimizer.param_groups} == {0.05}
    assert {g["momentum"] for g in trainer.optimizer.param_groups} == {0.5}
    assert [m["lr"] for m in trainer.train().losses] == [0.05] * 3
    assert trainer.optimizer.state  # momentum buffers were restored and used


class _Recorder(HookBase):
    def __init__(self, calls):
        self.calls = calls

    def before_train(self):
        self.calls.append(("before_train", self.trainer.iter))

    def before_step(self):
        self.calls.append(("before_step", self.trainer.iter))

    def after_step(self):
        step = self.trainer.storage.latest_step()
        self.calls.append(("after_step", self.trainer.iter, step["iteration"]))

    def after_train(self):
        self.calls.append(("after_train", self.trainer.iter, type(self.trainer.error).__name__))


class _StopAt(HookBase):
    """Stops the run like Ctrl-C once ``iteration`` steps are done (after the checkpoint hook ran)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise KeyboardInterrupt


def test_user_hooks_run_after_the_defaults_at_every_point(tmp_path):
    calls, late = [], []
    trainer = _trainer(tmp_path, tiny_cfg(max_iter=3), hooks=[_Recorder(calls)])
    trainer.register_hooks([_Recorder(late)])
    assert [type(h).__name__ for h in trainer.hooks][-2:] == ["_Recorder", "_Recorder"]
    assert [type(h).__name__ for h in trainer.hooks][:2] == ["ProgressBar", "PeriodicCheckpoint"]
    result = trainer.train()
    expected = [("before_train", 0)]
    for i in range(3):
        expected += [("before_step", i), ("after_step", i + 1, i + 1)]
    expected.append(("after_train", 3, "NoneType"))
    assert calls == expected and late == expected
    assert result.final_checkpoint == tmp_path / "model_final.pth"
    with pytest.raises(TypeError, match="HookBase"):
        trainer.register_hooks([lambda: None])


def test_after_train_hooks_run_when_training_fails(tmp_path):
    calls = []
    trainer = _trainer(tmp_path, tiny_cfg(), model=_NaNAfter(bad_call=3), hooks=[_Recorder(calls)])
    with pytest.raises(NonFiniteLossError):
        trainer.train()
    assert calls[-1] == ("after_train", 2, "NonFiniteLossError")
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "stopped", tiny_cfg(), hooks=[_StopAt(2), _Recorder(calls)]).train()
    assert calls[-1] == ("after_train", 2, "KeyboardInterrupt")
    assert not (tmp_path / "stopped" / "model_final.pth").exists()
    assert [_strict_json(l)["iteration"] for l in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_metrics_file_is_valid_json_with_null_for_nan(tmp_path):
    def evaluate(model):
        return {"segm": {"AP": 0.5, "APm": float("nan"), "APl": float("inf")}}

    result = _trainer(tmp_path, tiny_cfg(max_iter=2), evaluate=evaluate).train()
    records = [_strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1] == {"iteration": 2, "eval": {"segm": {"AP": 0.5, "APm": None, "APl": None}}}
    assert result.eval_results["segm"]["AP"] == 0.5


def test_in_memory_history_is_bounded_but_the_file_and_plot_have_everything(tmp_path):
    result = _trainer(tmp_path, tiny_cfg(max_iter=12), history_size=5).train()
    assert [m["iteration"] for m in result.losses] == list(range(8, 13))
    records = [_strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 13))
    assert result.loss_curve_path == tmp_path / "loss_curve.png" and result.loss_curve_path.stat().st_size > 1000


def test_resume_writes_each_iteration_once_to_the_metrics_file(tmp_path):
    """A run killed at iteration 9 after a checkpoint at 6 (and mid-line): the resumed run redoes 7..9."""
    _trainer(tmp_path, tiny_cfg(max_iter=9, checkpoint_period=6)).train()
    (tmp_path / "last_checkpoint").write_text("model_0000006.pth")
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"iteration": 10, "loss_to')  # cut short by the kill
    trainer = _trainer(tmp_path, tiny_cfg(max_iter=12, checkpoint_period=6))
    assert trainer.resume()
    trainer.train()
    records = [_strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, 13))


def test_evaluation_does_not_change_the_training_rng(tmp_path):
    """An evaluation that draws random numbers leaves the (dropout) training identical."""
    def noisy_evaluate(model):
        torch.rand(100)
        return {"segm": {"AP": 0.0}}

    def model():
        torch.manual_seed(0)
        return TinyDetector(dropout=0.5)

    cfg = tiny_cfg(max_iter=6, eval_period=2)
    plain = _trainer(tmp_path / "plain", cfg, model=model()).train()
    evaluated = _trainer(tmp_path / "eval", cfg, model=model(), evaluate=noisy_evaluate).train()
    assert [m["loss_total"] for m in plain.losses] == [m["loss_total"] for m in evaluated.losses]


def test_load_matching_weights_reports_what_it_skipped(tmp_path, caplog):
    torch.manual_seed(1)
    other = TinyDetector(num_classes=5).state_dict()
    other["extra.weight"] = torch.ones(2)
    del other["box.bias"]
    atomic_save({"model": other, "config": {}}, tmp_path / "other.pth")
    trainer = _trainer(tmp_path / "out", tiny_cfg())
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with caplog.at_level("WARNING", logger="blendmask.engine.trainer"):
        report = trainer.load_matching_weights(tmp_path / "other.pth")
    assert report.shape_mismatched == [("cls.bias", (5,), (3,)), ("cls.weight", (5, 8), (3, 8))]
    assert report.missing == ["box.bias"] and report.unexpected == ["extra.weight"]
    assert report.skipped == ["box.bias", "cls.bias", "cls.weight"]
    assert "cls.weight (file [5, 8], model [3, 8])" in caplog.text and "extra.weight" in caplog.text
    state = trainer.model.state_dict()
    assert torch.equal(state["box.weight"], other["box.weight"]) and "box.weight" in report.loaded
    assert all(torch.equal(state[k], before[k]) for k in report.skipped)


class _FakeSummaryWriter:
    instances = []

    def __init__(self, log_dir, purge_step):
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        _FakeSummaryWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_writer_hook_writes_every_number(tmp_path):
    hook = TensorBoardWriter(tmp_path / "tb", writer_factory=_FakeSummaryWriter)
    evaluate = lambda model: {"segm": {"AP": 0.25, "APm": float("nan")}}  # noqa: E731
    _trainer(tmp_path, tiny_cfg(max_iter=3, checkpoint_period=2), hooks=[hook], evaluate=evaluate).train()
    writer = _FakeSummaryWriter.instances[-1]
    assert writer.closed and writer.purge_step is None and writer.log_dir == str(tmp_path / "tb")
    assert [s for t, _, s in writer.scalars if t == "loss_total"] == [1, 2, 3]
    assert ("eval/segm/AP", 0.25, 3) in writer.scalars and not any(t == "eval/segm/APm" for t, _, _ in writer.scalars)
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    trainer = _trainer(tmp_path, tiny_cfg(max_iter=3), hooks=[TensorBoardWriter(tmp_path / "tb", _FakeSummaryWriter)])
    assert trainer.resume()
    trainer.train()
    assert _FakeSummaryWriter.instances[-1].purge_step == 3


def test_tensorboard_is_a_default_hook_only_when_importable(tmp_path):
    names = [type(h).__name__ for h in _trainer(tmp_path, tiny_cfg()).hooks]
    assert ("TensorBoardWriter" in names) == tensorboard_available()
    if not tensorboard_available():
        return
    _trainer(tmp_path, tiny_cfg(max_iter=2)).train()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("amp_cpu, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_amp_cpu_trains_under_bfloat16_autocast(tmp_path, amp_cpu, expected):
    """``solver.amp_cpu`` runs the CPU training step under bf16 autocast (off by default); the
    float32 master weights train, and the losses stay finite."""
    cfg = tiny_cfg(max_iter=6, amp_cpu=amp_cpu)
    trainer = _trainer(tmp_path, cfg)
    seen = []
    trainer.model.features[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    before = trainer.model.box.weight.detach().clone()
    result = trainer.train()
    assert set(seen) == {expected}
    assert trainer.model.box.weight.dtype == torch.float32 and not torch.equal(trainer.model.box.weight, before)
    assert all(torch.isfinite(torch.tensor(m["loss_total"])) for m in result.losses)


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_trainer_converts_the_model_to_channels_last_unless_told_not_to(tmp_path, channels_last):
    model = TinyDetector()
    trainer = _trainer(tmp_path, tiny_cfg(channels_last=channels_last, max_iter=2), model=model)
    conv = trainer.model.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert conv.weight.is_contiguous() != channels_last
    trainer.train()  # and trains
