"""Is training bit-reproducible at a given thread count, and if not, where do two runs first differ?

Trains the lite preset on a few synthetic shapes images (``blendmask make-shapes``) for
``--steps`` iterations, ``--runs`` times in this process with the same seed, and records at every
step a digest of every module's forward output (forward hooks), of the gradient reaching every
module output (tensor hooks, in backward order), of every parameter's gradient and of the loss.
Runs are compared with the first, record by record in the order they were made; the first record
that differs is printed (step, phase, module).

``--load N`` runs ``N`` busy-loop processes during the runs after the first (so the first run is as
idle as the machine is). ``--reference-threads T`` trains the first run at ``T`` threads instead,
to see where two thread counts part.

    python benchmarks/check_reproducibility.py --threads 2 --runs 3 --load 2
    python benchmarks/check_reproducibility.py --reference-threads 1 --threads 2 --runs 2
"""
from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch

Record = Tuple[str, str, float]  # (what, sha1 of the bytes, float64 sum)


def _busy_loop() -> None:
    while True:
        pass


def _digest(tensor: torch.Tensor) -> Tuple[str, float]:
    t = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha1(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest(), float(t.double().sum())


def _tensors(value, prefix: str = ""):
    """(suffix, tensor) of every floating-point tensor in a nested output."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            yield prefix, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{prefix}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{prefix}[{k}]")


class Recorder:
    """Forward outputs and output gradients of every module, parameter gradients, per step."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.records: List[Record] = []
        self.step = 0
        for name, module in model.named_modules():
            module.register_forward_hook(self._forward_hook(name or "model"))
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.register_hook(self._grad_hook(f"param {name}"))

    def add(self, what: str, tensor: torch.Tensor) -> None:
        self.records.append((f"step {self.step} {what}", *_digest(tensor)))

    def _forward_hook(self, name: str):
        def hook(module, inputs, output):
            for suffix, t in _tensors(output):
                self.add(f"forward {name}{suffix}", t)
                if t.requires_grad:
                    t.register_hook(lambda g, what=f"backward {name}{suffix}": self.add(what, g))
        return hook

    def _grad_hook(self, what: str):
        return lambda g: self.add(what, g)


def train_once(data: Path, *, steps: int, seed: int, output: Path) -> Tuple[List[Record], Dict[str, torch.Tensor]]:
    """Train ``steps`` iterations as ``blendmask train`` does; return the records and the weights."""
    from blendmask.config import get_config
    from blendmask.engine.defaults import load_dataset
    from blendmask.engine.tasks import task_of_config
    from blendmask.engine.train_loop import HookBase
    from blendmask.engine.trainer import Trainer
    from blendmask.models import build_model

    cfg = get_config("lite_mobilenet_v2", {"solver.ims_per_batch": 2, "solver.warmup_iters": 1,
                                           "solver.steps": (), "solver.max_iter": steps,
                                           "solver.checkpoint_period": 0})
    task = task_of_config(cfg)
    train_set = load_dataset(data, "train", task=task, input_cfg=cfg.input, augment=True)
    task.configure(cfg, train_set)
    torch.manual_seed(seed)
    model = build_model(cfg, weights_backbone=None)
    recorder = Recorder(model)

    class StepCounter(HookBase):
        def before_step(self):
            recorder.step = self.trainer.iter

        def after_step(self):
            recorder.add("loss_total", torch.tensor(self.trainer.storage.latest_step()["loss_total"]))

    trainer = Trainer(model=model, cfg=cfg, train_dataset=train_set, output_dir=output, device=torch.device("cpu"),
                      seed=seed, num_workers=0, show_progress=False, hooks=[StepCounter()])
    trainer.train()
    return recorder.records, {k: v.detach().clone() for k, v in model.state_dict().items()}


def first_difference(reference: List[Record], other: List[Record]) -> str:
    """The first record that differs, or ``"identical"``."""
    for i, (a, b) in enumerate(zip(reference, other)):
        if a[0] != b[0]:
            return f"record {i}: order differs: {a[0]!r} vs {b[0]!r}"
        if a[1] != b[1]:
            return f"record {i}/{len(reference)}: {a[0]}: sums {a[2]!r} vs {b[2]!r}"
    if len(reference) != len(other):
        return f"record counts differ: {len(reference)} vs {len(other)}"
    return "identical"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="training runs compared with the first (default 3)")
    parser.add_argument("--steps", type=int, default=3, help="iterations per run (default 3)")
    parser.add_argument("--images", type=int, default=4, help="synthetic training images (default 4)")
    parser.add_argument("--size", type=int, default=256, help="their side in pixels (default 256)")
    parser.add_argument("--load", type=int, default=0, help="busy-loop processes during runs 2.. (default 0)")
    parser.add_argument("--reference-threads", type=int, default=None,
                        help="threads of the first run (default: --threads)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)

    from blendmask.data.shapes import make_shapes

    reference_threads = args.reference_threads or args.threads
    print(f"torch {torch.__version__}, threads {args.threads} (run 0: {reference_threads}), load {args.load}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = make_shapes(Path(tmp) / "shapes", train=args.images, val=0, size=args.size, seed=0)
        torch.set_num_threads(reference_threads)
        reference, weights = train_once(data, steps=args.steps, seed=args.seed, output=Path(tmp) / "run0")
        print(f"run 0 ({reference_threads} threads, no added load): {len(reference)} records", flush=True)
        torch.set_num_threads(args.threads)
        differing = 0
        for run in range(1, args.runs):
            loaders = [multiprocessing.Process(target=_busy_loop, daemon=True) for _ in range(args.load)]
            for p in loaders:
                p.start()
            try:
                records, other = train_once(data, steps=args.steps, seed=args.seed, output=Path(tmp) / f"run{run}")
            finally:
                for p in loaders:
                    p.kill()
                    p.join()
            changed = [k for k in weights if not torch.equal(weights[k], other[k])]
            max_diff = max((float((weights[k].double() - other[k].double()).abs().max()) for k in changed), default=0.0)
            verdict = first_difference(reference, records)
            differing += verdict != "identical"
            print(f"run {run} ({args.threads} threads, load {args.load}): {verdict}; weights: {len(changed)} tensors differ "
                  f"(max |diff| {max_diff:.3g})", flush=True)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
