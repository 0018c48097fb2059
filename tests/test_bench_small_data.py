"""The small-data benchmark's training loop and run bookkeeping (benchmarks/bench_small_data.py):
gradient clipping reaches the optimizer, and runs with and without it are told apart."""
import importlib.util

import torch
from torch import nn

from tests.helpers.paths import REPO

_spec = importlib.util.spec_from_file_location("bench_small_data", REPO / "benchmarks" / "bench_small_data.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.full((1,), float(index + 1)), {"index": index}


class _SteepLoss(nn.Module):
    """A loss whose gradient norm is 1000 at ``weight == 0``."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2))

    def forward(self, images, targets):
        return {"loss": (self.weight * torch.tensor([600.0, 800.0])).sum()}


def _step_norm(clip: float) -> float:
    model = _SteepLoss()
    bench.train(model, _Images(), iters=1, batch=2, lr=1.0, warmup=1, seed=0, clip_grad_norm=clip)
    return float(model.weight.detach().norm())


def test_train_clips_the_gradient_norm_only_when_asked():
    assert abs(_step_norm(0.0) - 1000.0) < 1e-3  # lr 1, first SGD step: the gradient itself
    assert abs(_step_norm(5.0) - 5.0) < 1e-3


def _record(model, ap, clip=0.0, seed=0):
    return {"dataset": "nuclei", "model": model, "variant": "cp_lsj", "seed": seed, "p2": True,
            "lsj_range": list(bench.DEFAULT_LSJ_RANGE), "clip_grad_norm": clip, "mask_ap": ap}


def test_runs_with_clipping_are_grouped_and_compared_apart():
    summary = bench.summarise([_record("blendmask", 0.6, 5.0), _record("maskrcnn", 0.5, 5.0),
                               _record("blendmask", 0.3), _record("maskrcnn", 0.6)])
    assert set(summary) == {"nuclei/blendmask/cp_lsj+p2+clip5", "nuclei/maskrcnn/cp_lsj+p2+clip5",
                            "nuclei/blendmask/cp_lsj+p2", "nuclei/maskrcnn/cp_lsj+p2"}
    ratios = bench.blendmask_over_maskrcnn(summary)
    assert ratios == {"nuclei/cp_lsj+p2+clip5": 0.6 / 0.5, "nuclei/cp_lsj+p2": 0.3 / 0.6}


def test_set_test_size_resizes_the_test_images_of_either_model():
    image = torch.rand(3, 256, 128)
    for model in (bench.build_blendmask(1, 128, 128), bench.MaskRCNNOnLiteBackbone.build(1, 128, 128)):
        transform = model.test_transform if hasattr(model, "test_transform") else model.transform
        transform.eval()
        assert transform([image])[0].image_sizes == [(256, 128)]
        bench.set_test_size(model, 144)
        assert transform([image])[0].image_sizes == [(288, 144)]


def test_scores_at_other_test_sizes_are_tabulated_and_paired():
    runs = [dict(_record("blendmask", 0.6), **{"mask_ap@144": 0.7}), dict(_record("maskrcnn", 0.6), **{"mask_ap@144": 0.5})]
    summary = bench.summarise(runs)
    assert summary["nuclei/blendmask/cp_lsj+p2"]["mask_ap@144"]["values"] == [0.7]
    assert bench.blendmask_over_maskrcnn(summary) == {"nuclei/cp_lsj+p2": 1.0, "nuclei/cp_lsj+p2 (test 144)": 0.7 / 0.5}
    assert "| 144: 0.700 +- 0.000 |" in bench.markdown_table(summary)
