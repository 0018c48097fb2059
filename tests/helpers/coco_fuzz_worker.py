"""The COCO fuzzer's worker: run as a subprocess by ``tests/data/test_coco_fuzz.py``.

``python -m tests.helpers.coco_fuzz_worker --workdir DIR --examples N [--seed S] [--no-train] [--self-test KIND]``

Hypothesis draws a small valid COCO data set (1-2 images, 0-3 polygon / RLE / crowd annotations
each), then 0-3 hostile mutations of it:

- fields: delete or retype any field of any record (NaN, inf, huge and negative numbers, strings,
  lists, booleans, null), duplicate records, point ids at other or unknown records;
- masks: polygon coordinates and lengths, compressed RLE strings (characters, truncation), RLE
  sizes and uncompressed counts;
- images: odd modes and bit depths (16-bit, 32-bit int, float TIFF with and without NaN, palette,
  LA, RGBA, bilevel, CMYK JPEG), truncated, empty, garbage, missing, a directory, a
  decompression-bomb header, the wrong size;
- the JSON text: truncated, an integer with more digits than Python converts, a byte-order mark.

Each case is written to ``DIR/current/`` (with ``mutations.json`` describing it, so a crash leaves
its reproducer) and run through ``CocoInstanceDataset`` (construction and every ``__getitem__``),
one training step of the lite model and ``COCOEvaluator`` (perfect predictions). The case passes if
it either succeeds (images finite in [0, 1] with the annotated size, not constant when the file is
not, targets consistent, losses finite, metrics in [0, 1] or NaN) or raises a ``ValueError`` /
``FileNotFoundError`` whose message is one line naming the annotation file or the image file. Anything
else fails the run: another exception, an example over ``--timeout`` seconds (an exception in
Python code; ``faulthandler`` ends the process 5 s later if it is stuck in C code), more than
``--memory-gib`` GiB of address space beyond the worker's baseline (``RLIMIT_AS``), or a crash of
the process (the parent test sees its exit status). On success the worker prints one line
``FUZZ-SUMMARY {json}`` with the outcome counts.
"""
from __future__ import annotations

import argparse
import copy
import faulthandler
import io
import json
import logging
import math
import os
import resource
import shutil
import signal
import struct
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

# ------------------------------------------------------------------------------------- strategies
HOSTILE_VALUES = [
    None, True, False, "", "1", "x", [], {}, 0, -1, 1, 2, 2 ** 31, 2 ** 32 + 1, 2 ** 63, 2 ** 64, 10 ** 30, -10 ** 30,
    10 ** 400, math.nan, math.inf, -math.inf, 1e9, -1e9, 1e300, -1e300, 0.5, -0.5, 1e-300, [1, 2], [[1, 2, 3]],
    {"size": [1, 1], "counts": "0"}, {"counts": [1]},
]
hostile_value = st.one_of(st.sampled_from(HOSTILE_VALUES), st.integers(), st.floats(), st.text(max_size=4))
hostile_number = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e9, -1e9, 10 ** 400, -(10 ** 400), 2 ** 63, -1, 0, 1e300,
                     None, True, "3", [1]]),
    st.floats(), st.integers(),
)
FIELDS = {
    "images": ["id", "file_name", "width", "height"],
    "annotations": ["id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd"],
    "categories": ["id", "name"],
}
IMAGE_KINDS = ["rgb", "gray", "gray16", "gray16be", "int32", "int32wide", "float", "floatwide", "floatnan",
               "palette", "la", "rgba", "bilevel", "cmyk_jpeg", "bomb", "zero", "garbage", "missing", "directory"]
RLE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7F) | st.characters()


def _rle_string(mask: np.ndarray) -> str:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii")


def _runs(mask: np.ndarray) -> List[int]:
    """Uncompressed COCO RLE counts (column-major, starting with a run of zeros)."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] == 1 else runs


@st.composite
def valid_coco(draw) -> Tuple[Dict[str, Any], Dict[int, Dict[str, Any]]]:
    """A small valid COCO dict and the image spec of each image id."""
    categories = [{"id": i + 1, "name": f"c{i + 1}"} for i in range(draw(st.integers(1, 3)))]
    images, annotations, specs = [], [], {}
    for iid in range(1, draw(st.integers(1, 2)) + 1):
        h, w = draw(st.integers(16, 40)), draw(st.integers(16, 40))
        images.append({"id": iid, "file_name": f"im{iid}.png", "height": h, "width": w})
        specs[iid] = {"kind": "rgb", "size": [h, w]}  # the file has the valid record's size
        for _ in range(draw(st.integers(0, 3))):
            x0, y0 = draw(st.integers(0, w - 3)), draw(st.integers(0, h - 3))
            x1, y1 = draw(st.integers(x0 + 2, w)), draw(st.integers(y0 + 2, h))
            mask = np.zeros((h, w), np.uint8)
            mask[y0:y1, x0:x1] = 1
            kind = draw(st.sampled_from(["polygon", "rle", "rle_list"]))
            if kind == "polygon":
                seg: Any = [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]]
            elif kind == "rle":
                seg = {"size": [h, w], "counts": _rle_string(mask)}
            else:
                seg = {"size": [h, w], "counts": _runs(mask)}
            annotations.append({
                "id": len(annotations) + 1, "image_id": iid, "category_id": draw(st.sampled_from(categories))["id"],
                "segmentation": seg, "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": float(mask.sum()), "iscrowd": draw(st.sampled_from([0, 0, 0, 1])),
            })
    return {"images": images, "annotations": annotations, "categories": categories}, specs


def _pick(draw, items):
    return items[draw(st.integers(0, len(items) - 1))] if items else None


@st.composite
def mutation(draw, data: Dict[str, Any], specs: Dict[int, Dict[str, Any]], text_ops: List[Any]) -> str:
    """Apply one hostile mutation to ``data`` / ``specs`` / ``text_ops`` in place; return its description."""
    kind = draw(st.sampled_from(["field", "number", "polygon", "rle_string", "rle_other", "duplicate", "ids",
                                 "image", "top", "text"]))
    anns = data.get("annotations") if isinstance(data.get("annotations"), list) else []
    if kind == "field":
        key_list = draw(st.sampled_from(sorted(FIELDS)))
        records = data.get(key_list) if isinstance(data.get(key_list), list) else []
        rec = _pick(draw, [r for r in records if isinstance(r, dict)])
        if rec is None:
            return "field: no record"
        key = draw(st.sampled_from(FIELDS[key_list]))
        if draw(st.booleans()):
            rec.pop(key, None)
            return f"field: delete {key_list}.{key}"
        rec[key] = draw(hostile_value)
        return f"field: {key_list}.{key} = {rec[key]!r:.60}"
    if kind == "number":
        ann = _pick(draw, [a for a in anns if isinstance(a, dict)])
        if ann is None:
            return "number: no annotation"
        seg = ann.get("segmentation")
        target = ann.get("bbox") if draw(st.booleans()) or not isinstance(seg, list) else _pick(draw, seg)
        if not isinstance(target, list) or not target:
            return "number: nothing to change"
        index = draw(st.integers(0, len(target) - 1))
        target[index] = draw(hostile_number)
        return f"number: annotation {ann.get('id')!r} [{index}] = {target[index]!r:.60}"
    if kind == "polygon":
        ann = _pick(draw, [a for a in anns if isinstance(a, dict) and isinstance(a.get("segmentation"), list)])
        if ann is None:
            return "polygon: none"
        op = draw(st.sampled_from(["cut", "extend", "empty", "wrap", "many"]))
        seg = ann["segmentation"]
        if op == "cut" and seg and isinstance(seg[0], list):
            seg[0] = seg[0][: draw(st.integers(0, 7))]
        elif op == "extend" and seg and isinstance(seg[0], list):
            seg[0] += draw(st.lists(st.floats(-100, 100), min_size=1, max_size=3))
        elif op == "empty":
            ann["segmentation"] = []
        elif op == "wrap":
            ann["segmentation"] = [seg]
        else:  # a big but legal polygon: 150 points spanning the allowed range (4 x the image side)
            side = 40.0
            ann["segmentation"] = [[-3.9 * side, -3.9 * side, 3.9 * side, -3.9 * side, 0.0, 3.9 * side] * 50]
        return f"polygon: {op} on annotation {ann.get('id')!r}"
    if kind == "rle_string":
        ann = _pick(draw, [a for a in anns if isinstance(a, dict) and isinstance(a.get("segmentation"), dict)
                           and isinstance(a["segmentation"].get("counts"), str)])
        if ann is None:
            return "rle_string: none"
        counts = ann["segmentation"]["counts"]
        op = draw(st.sampled_from(["replace", "truncate", "append", "random"]))
        if op == "replace" and counts:
            i = draw(st.integers(0, len(counts) - 1))
            counts = counts[:i] + draw(RLE_CHARS) + counts[i + 1:]
        elif op == "truncate":
            counts = counts[: draw(st.integers(0, max(0, len(counts) - 1)))]
        elif op == "append":
            counts += draw(st.text(RLE_CHARS, min_size=1, max_size=4))
        else:
            counts = draw(st.text(st.characters(min_codepoint=0x30, max_codepoint=0x6F), max_size=12))
        ann["segmentation"]["counts"] = counts
        return f"rle_string: {op} -> {counts!r:.60}"
    if kind == "rle_other":
        ann = _pick(draw, [a for a in anns if isinstance(a, dict) and isinstance(a.get("segmentation"), dict)])
        if ann is None:
            return "rle_other: none"
        seg = ann["segmentation"]
        if draw(st.booleans()) or not isinstance(seg.get("counts"), list) or not seg["counts"]:
            seg["size"] = draw(st.one_of(hostile_value, st.lists(st.integers(-2, 50), max_size=3)))
            return f"rle_other: size = {seg['size']!r:.60}"
        index = draw(st.integers(0, len(seg["counts"]) - 1))
        seg["counts"][index] = draw(hostile_number)
        return f"rle_other: counts[{index}] = {seg['counts'][index]!r:.60}"
    if kind == "duplicate":
        key_list = draw(st.sampled_from(sorted(FIELDS)))
        records = data.get(key_list)
        rec = _pick(draw, records if isinstance(records, list) else [])
        if rec is None:
            return "duplicate: none"
        records.append(copy.deepcopy(rec))
        return f"duplicate: {key_list} record"
    if kind == "ids":
        ann = _pick(draw, [a for a in anns if isinstance(a, dict)])
        if ann is None:
            return "ids: none"
        key = draw(st.sampled_from(["image_id", "category_id", "id"]))
        ann[key] = draw(st.integers(-2, 5))
        return f"ids: annotation {key} = {ann[key]}"
    if kind == "image":
        iid = _pick(draw, sorted(specs))
        op = draw(st.sampled_from(["kind", "truncate", "size"]))
        if op == "kind":
            specs[iid]["kind"] = draw(st.sampled_from(IMAGE_KINDS))
        elif op == "truncate":
            specs[iid]["truncate"] = draw(st.floats(0.0, 0.99))
        else:
            specs[iid]["size_delta"] = draw(st.sampled_from([(1, 0), (0, -1), (5, 5), "transpose"]))
        return f"image {iid}: {op} {specs[iid]}"
    if kind == "top":
        key = draw(st.sampled_from(["images", "annotations", "categories"]))
        if draw(st.booleans()):
            data.pop(key, None)
            return f"top: delete {key}"
        data[key] = draw(hostile_value)
        return f"top: {key} = {data[key]!r:.60}"
    op = draw(st.sampled_from(["truncate", "huge_int", "bom", "latin1"]))
    text_ops.append((op, draw(st.floats(0.0, 1.0))))
    return f"text: {op}"


@st.composite
def hostile_case(draw):
    data, specs = draw(valid_coco())
    text_ops: List[Any] = []
    described = [draw(mutation(data, specs, text_ops)) for _ in range(draw(st.integers(0, 3)))]
    return data, specs, text_ops, described


# ------------------------------------------------------------------------------------- writing
def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def write_image(path: Path, spec: Dict[str, Any], height: int, width: int, seed: int) -> bool:
    """Write the image ``spec`` describes; return whether its pixels are not constant."""
    kind = spec["kind"]
    if kind == "missing":
        return False
    if kind == "directory":
        path.mkdir()
        return False
    delta = spec.get("size_delta")
    if delta == "transpose":
        height, width = width, height
    elif delta:
        width, height = width + delta[0], height + delta[1]
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    fmt = "PNG"
    if kind in ("bomb", "zero", "garbage"):
        data = {"bomb": _png_header_only(30000, 30000), "zero": b"", "garbage": rng.bytes(64)}[kind]
    else:
        if kind == "rgb":
            img = Image.fromarray(rgb)
        elif kind == "gray":
            img = Image.fromarray(gray)
        elif kind in ("gray16", "gray16be"):
            values = rng.integers(0, 4000, (height, width)).astype(np.uint16)
            img = Image.fromarray(values.astype(">u2") if kind == "gray16be" else values)
            fmt = "TIFF" if kind == "gray16be" else "PNG"
        elif kind in ("int32", "int32wide"):
            values = rng.integers(0, 60000, (height, width)).astype(np.int32)
            img, fmt = Image.fromarray(values * 1000 - 7 if kind == "int32wide" else values), "TIFF"
        elif kind in ("float", "floatwide", "floatnan"):
            values = rng.random((height, width)).astype(np.float32)
            if kind == "floatwide":
                values = values * 500 - 3
            if kind == "floatnan":
                values[0, 0] = np.nan
            img, fmt = Image.fromarray(values), "TIFF"
        elif kind == "palette":
            img = Image.fromarray(rgb).quantize(8)
        elif kind == "la":
            img = Image.fromarray(rgb[..., :2].copy(), "LA")
        elif kind == "rgba":
            img = Image.fromarray(np.dstack([rgb, gray]), "RGBA")
        elif kind == "bilevel":
            img = Image.fromarray(gray > 127)
        else:  # cmyk_jpeg
            img, fmt = Image.fromarray(np.dstack([rgb, gray]), "CMYK"), "JPEG"
        buffer = io.BytesIO()
        img.save(buffer, format=fmt)
        data = buffer.getvalue()
    if spec.get("truncate") is not None:
        data = data[: int(len(data) * spec["truncate"])]
    path.write_bytes(data)
    return kind not in ("bomb", "zero", "garbage")


def write_case(root: Path, data: Dict[str, Any], specs: Dict[int, Dict[str, Any]], text_ops: List[Any]) -> Dict[int, bool]:
    """Write ``root/ann.json`` and ``root/images/*``; return ``{image id: has varying pixels}``."""
    images = root / "images"
    images.mkdir(parents=True)
    varying = {}
    for iid, spec in specs.items():
        h, w = spec["size"]  # the valid record's size; the record may have been mutated since
        varying[iid] = write_image(images / f"im{iid}.png", spec, h, w, seed=iid)
    text = json.dumps(data)
    raw = text.encode("utf-8")
    for op, where in text_ops:
        if op == "truncate":
            raw = raw[: int(len(raw) * where)]
        elif op == "huge_int":
            raw = raw.replace(b'"id": ', b'"id": ' + b"9" * 5000, 1)
        elif op == "bom":
            raw = b"\xef\xbb\xbf" + raw
        else:
            raw = raw.replace(b"c1", "c\u00e9".encode("latin-1"), 1)
    (root / "ann.json").write_bytes(raw)
    return varying


# ------------------------------------------------------------------------------------- running
class ExampleTimeout(Exception):
    """An example ran past --timeout seconds."""


class Runner:
    """Runs one written case through dataset, training step and evaluator; checks the outcome."""

    def __init__(self, train: bool) -> None:
        import torch

        from blendmask.config import get_config
        from blendmask.data import CocoInstanceDataset
        from blendmask.evaluation import COCOEvaluator
        from blendmask.models import build_model

        torch.set_num_threads(1)
        self.torch, self.dataset_class, self.evaluator_class = torch, CocoInstanceDataset, COCOEvaluator
        self.train = train
        self._models: Dict[int, Any] = {}
        self._build = lambda n: build_model(get_config("lite_mobilenet_v2", {
            "model.num_classes": n, "input.min_size_train": (48,), "input.max_size_train": 64,
            "input.min_size_test": 48, "input.max_size_test": 64})).train()
        if train:
            self.model(1)  # build once now so the memory baseline includes a model

    def model(self, num_classes: int):
        if num_classes not in self._models:
            self.torch.manual_seed(0)
            self._models[num_classes] = self._build(num_classes)
        return self._models[num_classes]

    def __call__(self, root: Path, varying: Dict[int, bool]) -> str:
        ann_file, image_dir = root / "ann.json", root / "images"
        try:
            dataset = self.dataset_class(ann_file, image_dir)
            samples = [dataset[i] for i in range(len(dataset))]
        except (ValueError, FileNotFoundError) as e:
            message = str(e)
            assert "\n" not in message, f"error message is not one line: {message!r}"
            assert str(ann_file) in message or str(image_dir) in message, \
                f"error names neither the annotation file nor the image: {message!r}"
            return f"refused: {type(e).__name__}"
        self._check_samples(dataset, samples, varying)
        if self.train and samples and dataset.num_classes <= 8:
            model = self.model(dataset.num_classes)
            losses = model([image for image, _ in samples[:2]], [target for _, target in samples[:2]])
            total = sum(losses.values())
            assert self.torch.isfinite(total), f"non-finite loss {losses}"
            total.backward()
            model.zero_grad(set_to_none=True)
        if samples:
            evaluator = self.evaluator_class(dataset)
            for image, target in samples:
                n = len(target["labels"])
                evaluator.process([target["image_id"]], [{
                    "boxes": target["boxes"], "labels": target["labels"], "scores": self.torch.ones(n),
                    "masks": _bitmasks(target["masks"])[:, None].float()}])
            for task, values in evaluator.evaluate().items():
                for name, value in values.items():
                    assert math.isnan(value) or 0.0 <= value <= 1.0, f"{task} {name} = {value}"
        return "ok"

    def _check_samples(self, dataset, samples, varying) -> None:
        torch = self.torch
        for (image, target), image_id in zip(samples, dataset.image_ids):
            info = dataset.coco.imgs[image_id]
            h, w = info["height"], info["width"]
            assert image.shape == (3, h, w) and image.dtype == torch.float32
            assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
            if varying.get(image_id):
                assert image.max() > image.min(), "an image with varying pixels loaded as a constant"
            n = len(target["labels"])
            masks = target["masks"]
            if not isinstance(masks, self.torch.Tensor):  # polygon annotations stay PolygonMasks
                assert len(masks) == n and masks.image_size == (h, w)
            assert _bitmasks(masks).shape == (n, h, w) and target["boxes"].shape == (n, 4)
            boxes = target["boxes"]
            assert torch.isfinite(boxes).all() and (boxes[:, 2:] > boxes[:, :2]).all()
            assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
            assert n == 0 or (target["labels"].min() >= 0 and target["labels"].max() < dataset.num_classes)


def _bitmasks(masks):
    """``(n, H, W)`` masks of a target's ``masks``: a tensor, or PolygonMasks rasterised."""
    return masks if hasattr(masks, "shape") else masks.to_bitmasks()


def _address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _self_test(kind: str):
    """A broken runner, to prove the harness catches what it must (used by the parent's tests)."""
    def run(root: Path, varying: Dict[int, bool]) -> str:
        if kind == "crash":
            import ctypes
            ctypes.string_at(0)  # segfault
        if kind == "memory":
            bytearray(3 << 30)  # fine without a limit (pages are mapped lazily), MemoryError under --memory-gib 2
        if kind == "hang":
            while True:
                pass
        if kind == "c_hang":  # stuck in C code holding the GIL; Python's signal handler never runs
            import ctypes
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            ctypes.PyDLL(None).sleep(60)
        if kind == "traceback":
            raise KeyError("area")
        return "ok"
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: derandomized, reproducible)")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per example")
    parser.add_argument("--memory-gib", type=float, default=2.0, help="address space per example beyond the baseline")
    parser.add_argument("--self-test", choices=["crash", "memory", "hang", "c_hang", "traceback"])
    args = parser.parse_args(argv)

    faulthandler.enable()  # a crash prints the Python stack of the case
    logging.disable(logging.WARNING)  # "no predictions on N images" and the like, once per example
    runner = _self_test(args.self_test) if args.self_test else Runner(train=not args.no_train)
    limit = _address_space() + int(args.memory_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def on_alarm(signum, frame):
        raise ExampleTimeout(f"example ran past {args.timeout} s")
    signal.signal(signal.SIGALRM, on_alarm)

    current = Path(args.workdir) / "current"
    outcomes: Counter = Counter()

    # a self-test fails every example: report the first one without shrinking
    phases = [Phase.generate] if args.self_test else list(Phase)

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=args.seed is None,
              suppress_health_check=list(HealthCheck), print_blob=True, phases=phases,
              report_multiple_bugs=not args.self_test)
    @given(hostile_case())
    def fuzz(case):
        data, specs, text_ops, described = case
        if current.exists():
            shutil.rmtree(current)
        current.mkdir(parents=True)
        varying = write_case(current, data, specs, text_ops)
        (current / "mutations.json").write_text(json.dumps(described, indent=1))
        signal.setitimer(signal.ITIMER_REAL, args.timeout)  # a hang in Python code: an exception
        faulthandler.dump_traceback_later(args.timeout + 5, exit=True)  # a hang in C code: exit status 1
        try:
            outcome = runner(current.resolve(), varying)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
        outcomes[outcome] += 1

    if args.seed is not None:
        fuzz = __import__("hypothesis").seed(args.seed)(fuzz)
    fuzz()
    summary = {"examples": sum(outcomes.values()), "ok": outcomes.pop("ok", 0),
               "refused": sum(outcomes.values()), "refused_by_type": dict(outcomes)}
    print("FUZZ-SUMMARY " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
