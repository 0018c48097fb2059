"""Sizes from --set that cannot fit are refused naming the key, before anything is allocated."""
import pytest
import torch

from blendmask.config import MAX_INPUT_SIDE, get_config
from blendmask.engine import Trainer


@pytest.mark.parametrize("key, value", [("input.max_size_train", 100000), ("input.max_size_test", 100000),
                                        ("input.min_size_train", (800, 100000)), ("input.min_size_test", 9000)])
def test_input_sizes_beyond_the_limit_are_refused(key, value):
    with pytest.raises(ValueError, match=f"config key '{key}' must be at most {MAX_INPUT_SIDE} pixels"):
        get_config("lite_mobilenet_v2", {key: value})


def test_the_largest_allowed_size_is_accepted():
    assert get_config("lite_mobilenet_v2", {"input.max_size_train": MAX_INPUT_SIDE}).input.max_size_train == MAX_INPUT_SIDE


class _TwelveImages(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, index):
        raise AssertionError("nothing is read")


def test_a_batch_larger_than_the_training_set_is_refused(tmp_path):
    cfg = get_config("lite_mobilenet_v2", {"solver.ims_per_batch": 100000})
    with pytest.raises(ValueError, match=r"solver.ims_per_batch=100000 is larger than the training set \(12 images\)"):
        Trainer(model=torch.nn.Linear(1, 1), cfg=cfg, train_dataset=_TwelveImages(), output_dir=tmp_path)
