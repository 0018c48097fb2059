"""The COCO dataset's records are flat arrays: a fixed number of Python objects whatever the number
of images, which forked loader workers read without copying."""
from __future__ import annotations

import gc
import json
import os
import types

import numpy as np
import pytest
import torch

from blendmask.data import CocoInstanceDataset
from blendmask.data.coco_records import CocoRecords

from tests.helpers.synthetic_coco import write_polygon_coco

_NOT_OWNED = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def _owned_objects(root) -> int:
    """Number of objects reachable from ``root`` (modules, classes and functions excluded)."""
    seen, stack = set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _NOT_OWNED):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(seen)


def test_objects_owned_do_not_grow_with_the_images(tmp_path):
    small = CocoInstanceDataset(write_polygon_coco(tmp_path / "s", 20), tmp_path / "s" / "images")
    large = CocoInstanceDataset(write_polygon_coco(tmp_path / "l", 800), tmp_path / "l" / "images")
    assert len(small) == 20 and len(large) == 800
    assert _owned_objects(large) == _owned_objects(small)


def test_targets_match_the_file(tmp_path):
    path = write_polygon_coco(tmp_path, 30, per_image=3)
    data = json.loads(path.read_text())
    ds = CocoInstanceDataset(path, tmp_path / "images")
    for index in (0, 17, 29):
        target = ds.load_target(index)
        anns = [a for a in data["annotations"] if a["image_id"] == ds.image_id(index)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns])
        assert torch.equal(target["boxes"], boxes)
        assert target["labels"].tolist() == [a["category_id"] - 1 for a in anns]
        for polys, a in zip(target["masks"].polygons, anns):
            assert [p.tolist() for p in polys] == a["segmentation"]


def test_records_round_trip_through_saved_arrays(tmp_path):
    path = write_polygon_coco(tmp_path, 10, per_image=2)
    ds = CocoInstanceDataset(path, tmp_path / "images")
    again = CocoRecords.from_arrays({k: v.copy() for k, v in ds.records.arrays().items()})
    assert again.to_coco_dict() == ds.records.to_coco_dict()
    broken = dict(ds.records.arrays(), polygon_ends=ds.records.polygon_ends[:-1])
    with pytest.raises(ValueError, match="polygon_ends"):
        CocoRecords.from_arrays(broken)


def _private_bytes() -> int:
    with open("/proc/self/smaps_rollup") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return sum(int(fields[k].split()[0]) * 1024 for k in ("Private_Clean", "Private_Dirty"))


def _growth_in_forked_child(read) -> int:
    """Bytes of private memory a forked child gains while calling ``read()`` (gc runs too)."""
    gc.collect()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            gc.collect()  # touches every tracked object of the process once: not part of the reads
            before = _private_bytes()
            read()
            gc.collect()
            os.write(write_fd, str(_private_bytes() - before).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        growth = int(f.read() or -1)
    os.waitpid(pid, 0)
    assert growth >= 0, "the child did not report"
    return growth


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup") or not hasattr(os, "fork"),
                    reason="needs Linux /proc and fork")
def test_forked_reader_does_not_copy_the_records(tmp_path):
    """A forked worker reading every target of a few thousand images keeps (nearly) no private copy.
    The same file as Python objects (the JSON parsed) is copied by the same reads: the measure
    can tell the two apart."""
    path = write_polygon_coco(tmp_path, 3000)
    ds = CocoInstanceDataset(path, tmp_path / "images")
    limit = 8 << 20

    def read_targets():
        for index in range(len(ds)):
            ds.load_target(index)

    flat = _growth_in_forked_child(read_targets)
    assert flat < limit, f"a forked reader copied {flat / 2**20:.1f} MiB of the flat records"
    parsed = json.loads(path.read_text())

    def read_objects():
        total = 0.0
        for ann in parsed["annotations"]:
            total += sum(np.asarray(ann["segmentation"][0]))

    assert _growth_in_forked_child(read_objects) > limit  # the control: Python objects get copied
