"""The two tasks (instance, panoptic): each is found from its data, its config and its weights
file, never guessed, and owns its data set, class counts, summaries and synthetic data."""
import pytest
import torch

from blendmask.config import get_config
from blendmask.data import CocoInstanceDataset
from blendmask.data.panoptic import CocoPanopticDataset
from blendmask.engine.tasks import INSTANCE, PANOPTIC, TASKS, task_of_config, task_of_data, task_of_weights

SIZE = 64


@pytest.fixture(scope="module")
def instance_set(tmp_path_factory):
    return INSTANCE.make_shapes(tmp_path_factory.mktemp("shapes"), train=2, val=1, size=SIZE, seed=1)


@pytest.fixture(scope="module")
def panoptic_set(tmp_path_factory):
    return PANOPTIC.make_shapes(tmp_path_factory.mktemp("panoptic"), train=2, val=1, size=SIZE, seed=1)


def test_the_registry_holds_both_tasks_and_each_default_preset_is_of_its_task():
    assert TASKS == {"instance": INSTANCE, "panoptic": PANOPTIC}
    for task in TASKS.values():
        assert task_of_config(get_config(task.default_config)) is task
    assert INSTANCE.default_config == "lite_mobilenet_v2"
    assert PANOPTIC.default_config == "lite_mobilenet_v2_panoptic"


def test_the_task_of_data_is_the_format_of_its_annotations(instance_set, panoptic_set, tmp_path):
    assert task_of_data(instance_set) is INSTANCE
    assert task_of_data(panoptic_set) is PANOPTIC
    assert task_of_data(instance_set / "annotations" / "instances_val.json") is INSTANCE
    assert task_of_data(panoptic_set / "annotations" / "panoptic_val.json") is PANOPTIC
    with pytest.raises(FileNotFoundError, match="neither a directory nor a COCO JSON"):
        task_of_data(tmp_path / "missing")


@pytest.mark.parametrize("config, expected", [("lite_mobilenet_v2", INSTANCE),
                                              ("lite_mobilenet_v2_panoptic", PANOPTIC)])
def test_the_task_of_weights_is_the_task_of_their_embedded_config(config, expected, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"model": {}, "config": get_config(config).to_dict()}, path)
    assert task_of_weights(path) is expected


def test_weights_without_a_config_are_instance_weights(tmp_path):
    """Building their model then says that the config is missing."""
    path = tmp_path / "weights.pth"
    torch.save({"model": {}}, path)
    assert task_of_weights(path) is INSTANCE


def test_each_task_builds_its_own_data_set_class(instance_set, panoptic_set):
    assert type(INSTANCE.build_dataset(instance_set, "val")) is CocoInstanceDataset
    assert type(PANOPTIC.build_dataset(panoptic_set, "val")) is CocoPanopticDataset
    augmented = PANOPTIC.build_dataset(panoptic_set, "train", input_cfg=get_config(PANOPTIC.default_config).input,
                                       augment=True)
    assert augmented.transforms is not None and PANOPTIC.build_dataset(panoptic_set, "train").transforms is None


def test_configure_sizes_the_classes_and_returns_what_the_weights_file_stores(instance_set, panoptic_set):
    cfg = get_config(INSTANCE.default_config, {"model.num_classes": 1})
    dataset = INSTANCE.build_dataset(instance_set, "train")
    state = INSTANCE.configure(cfg, dataset)
    assert cfg.model.num_classes == dataset.num_classes == 4
    assert state == {"class_names": ["circle", "rectangle", "triangle", "ellipse"],
                     "category_ids": dataset.category_ids}
    assert INSTANCE.describe_classes(dataset) == "4 classes"

    cfg = get_config(PANOPTIC.default_config, {"model.num_classes": 1, "model.panoptic.num_stuff_classes": 1})
    dataset = PANOPTIC.build_dataset(panoptic_set, "train")
    state = PANOPTIC.configure(cfg, dataset)
    assert (cfg.model.num_classes, cfg.model.panoptic.num_stuff_classes) == (4, 3)
    assert state["stuff_names"] == ["sky", "ground", "water"] and len(state["stuff_category_ids"]) == 3
    assert state["class_names"] == ["circle", "rectangle", "triangle", "ellipse"]
    assert PANOPTIC.describe_classes(dataset) == "4 classes + 3 stuff"


def test_check_dataset_names_the_counts_that_differ(instance_set, panoptic_set):
    cfg = get_config(INSTANCE.default_config, {"model.num_classes": 3})
    with pytest.raises(ValueError, match=r"^w\.pth predicts 3 classes but d has 4 categories$"):
        INSTANCE.check_dataset(cfg, INSTANCE.build_dataset(instance_set, "val"), weights="w.pth", data="d")
    cfg = get_config(PANOPTIC.default_config, {"model.num_classes": 4, "model.panoptic.num_stuff_classes": 2})
    with pytest.raises(ValueError, match=r"^w\.pth predicts 2 stuff classes but d has 3 stuff categories$"):
        PANOPTIC.check_dataset(cfg, PANOPTIC.build_dataset(panoptic_set, "val"), weights="w.pth", data="d")


def test_summaries_read_the_metrics_of_their_own_task():
    coco = {"bbox": {"AP": 0.5, "AP50": 0.75}, "segm": {"AP": 0.25, "AP50": 0.5}}
    assert INSTANCE.format_summary(coco) == "bbox AP=0.500 AP50=0.750, segm AP=0.250 AP50=0.500"
    assert INSTANCE.demo_headline(coco) == "mask AP = 0.250, AP50 = 0.500 (goal: AP >= 0.50, AP50 >= 0.85)"
    pq = {"All": {"PQ": 0.5}, "Things": {"PQ": 0.25}, "Stuff": {"PQ": 0.75}}
    assert PANOPTIC.format_summary(pq) == "All PQ=0.500, Things PQ=0.250, Stuff PQ=0.750"
    assert PANOPTIC.demo_headline(pq) == "PQ = 0.500 (things 0.250, stuff 0.750) (goal: PQ >= 0.60)"

