"""A COCO instance file of any size, fast to write: ``n`` images of 640x480 with polygon
annotations (empty image files, for the tests that never decode pixels)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_polygon_coco(root: Path, n_images: int, *, per_image: int = 7, vertices: int = 20, seed: int = 0,
                       image_files: bool = True) -> Path:
    """Write ``root/ann.json`` (and empty ``root/images/NNNNNN.jpg`` files); return the JSON's path."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 640, "height": 480})
        for _ in range(per_image):
            cx, cy, r = rng.uniform(60, 420), rng.uniform(60, 300), rng.uniform(10, 50)
            angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
            xy = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).round(2)
            x0, y0 = xy.min(0)
            x1, y1 = xy.max(0)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(rng.integers(1, 6)),
                                "segmentation": [xy.reshape(-1).tolist()], "area": float(r * r * 3),
                                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "iscrowd": 0})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 6)]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    if image_files:
        (root / "images").mkdir(exist_ok=True)
        for rec in images:
            (root / "images" / rec["file_name"]).touch()
    return path


def count_json_parses(monkeypatch) -> list:
    """Record, in the returned list, the path of every COCO JSON file the records index parses
    (``coco_index.read_json_file``) from now on in the test."""
    import os

    from blendmask.data import coco_index

    parsed: list = []
    real = coco_index.read_json_file

    def counting(path, **kwargs):
        parsed.append(os.fspath(path))
        return real(path, **kwargs)

    monkeypatch.setattr(coco_index, "read_json_file", counting)
    return parsed
