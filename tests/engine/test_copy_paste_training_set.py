"""``input.copy_paste`` and ``input.lsj`` reach the instance task's training set (its 8-bit images
stay uint8 through both); panoptic data refuses copy-paste in one line naming the key."""
import pytest
import torch

from blendmask.config import get_config
from blendmask.data import CocoInstanceDataset
from blendmask.data.copy_paste import CopyPasteDataset
from blendmask.data.jitter import resize_crop_pad
from blendmask.engine.tasks import INSTANCE, PANOPTIC

SIZE = 64


@pytest.fixture(scope="module")
def instance_set(tmp_path_factory):
    return INSTANCE.make_shapes(tmp_path_factory.mktemp("shapes"), train=3, val=1, size=SIZE, seed=2)


def test_copy_paste_wraps_the_raw_training_set_and_runs_the_transforms_itself(instance_set):
    cfg = get_config("lite_mobilenet_v2", {"input.copy_paste.prob": 1.0, "input.copy_paste.max_instances": 2,
                                           "input.lsj.enabled": True, "input.lsj.output_size": (48, 40),
                                           "input.lsj.scale_range": (0.5, 1.5)})
    train_set = INSTANCE.build_dataset(instance_set, "train", input_cfg=cfg.input, augment=True)
    assert isinstance(train_set, CopyPasteDataset)
    assert (train_set.prob, train_set.max_instances) == (1.0, 2)
    assert isinstance(train_set.dataset, CocoInstanceDataset) and train_set.dataset.transforms is None
    assert train_set.dataset.uint8_images and train_set.num_classes == 4
    torch.manual_seed(0)
    for index in range(len(train_set)):
        image, target = train_set[index]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 48, 40)
        assert tuple(target["masks"].shape[1:]) == (48, 40) and len(target["labels"]) == len(target["boxes"])


def test_without_copy_paste_the_training_set_is_the_plain_one(instance_set):
    train_set = INSTANCE.build_dataset(instance_set, "train", input_cfg=get_config("lite_mobilenet_v2").input,
                                        augment=True)
    assert type(train_set) is CocoInstanceDataset and train_set.transforms is not None


def test_panoptic_data_refuses_copy_paste_naming_the_key(tmp_path):
    data = PANOPTIC.make_shapes(tmp_path / "panoptic", train=1, val=1, size=SIZE, seed=1)
    cfg = get_config("lite_mobilenet_v2_panoptic", {"input.copy_paste.prob": 0.5})
    with pytest.raises(ValueError, match=r"input\.copy_paste\.prob") as info:
        PANOPTIC.build_dataset(data, "train", input_cfg=cfg.input, augment=True)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("resized", [(20, 25), (80, 100)])
def test_large_scale_jitter_keeps_uint8_images_within_one_level_of_the_float_path(resized):
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    target = {"boxes": torch.tensor([[1.0, 1.0, 10.0, 10.0]]), "labels": torch.tensor([1])}
    as_uint8, _ = resize_crop_pad(image, target, resized, 0, 0, (30, 30))
    as_float, _ = resize_crop_pad(image.float() / 255, target, resized, 0, 0, (30, 30))
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == as_float.shape
    assert (as_uint8.float() - as_float * 255).abs().max() <= 1.0 + 1e-3
