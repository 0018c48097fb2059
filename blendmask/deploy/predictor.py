"""Run an exported BlendMask ONNX file with onnxruntime on the CPU."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Union

import torch
from torch import Tensor

from blendmask.data.images import ImageReading
from blendmask.models.blendmask import postprocess_detections
from blendmask.models.transform import ImageTransform

from .onnx_export import INPUT_NAMES, OUTPUT_NAMES, READING_METADATA_KEY, TRANSFORM_METADATA_KEY

__all__ = ["OnnxPredictor"]


class OnnxPredictor:
    """Detections from an ONNX file written by :func:`blendmask.deploy.export_onnx`.

    ``predictor(images)`` takes what the PyTorch model takes, a list of float RGB ``(3, H, W)``
    tensors in ``[0, 1]``, and returns what it returns in eval: one
    ``dict(boxes (n, 4), labels (n,) int64, scores (n,), masks (n, 1, H, W))`` per image, in that
    image's size, masks as probabilities. Images are resized, normalised and padded by the
    model's own :class:`~blendmask.models.transform.ImageTransform`, rebuilt from the file's
    metadata, and run one at a time (the results equal the PyTorch model's on single images).
    ``predictor.reading`` is how image files are to be read for it (the metadata's
    :class:`~blendmask.data.ImageReading`; the defaults for a file written before it was recorded).

    Args:
        path: the ``.onnx`` file.
        num_threads: onnxruntime intra-op threads (0: onnxruntime's default).
    """

    def __init__(self, path: Union[str, os.PathLike], *, num_threads: int = 0):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if TRANSFORM_METADATA_KEY not in meta:
            raise ValueError(f"{path} was not written by blendmask.deploy.export_onnx: "
                             f"its metadata lacks {TRANSFORM_METADATA_KEY!r}")
        names = tuple(i.name for i in self.session.get_inputs()), tuple(o.name for o in self.session.get_outputs())
        if names != (INPUT_NAMES, OUTPUT_NAMES):
            raise ValueError(f"{path} has inputs/outputs {names}, expected {(INPUT_NAMES, OUTPUT_NAMES)}")
        self.reading = (ImageReading.from_dict(json.loads(meta[READING_METADATA_KEY]))
                        if READING_METADATA_KEY in meta else ImageReading())
        t = json.loads(meta[TRANSFORM_METADATA_KEY])
        self.transform = ImageTransform(
            min_size_train=(t["min_size_test"],),
            max_size_train=t["max_size_test"],
            min_size_test=t["min_size_test"],
            max_size_test=t["max_size_test"],
            size_divisibility=t["size_divisibility"],
            pixel_mean=t["pixel_mean"],
            pixel_std=t["pixel_std"],
            input_format=t["input_format"],
        ).eval()

    def run_raw(self, images: Tensor, image_size: Tensor) -> List[Tensor]:
        """Run the graph on one normalised padded ``(1, 3, Hp, Wp)`` image and its ``(2,)`` int64
        ``[h, w]``; returns ``[boxes (n, 4), scores (n,), labels (n,), masks (n, R, R)]``."""
        feeds = {INPUT_NAMES[0]: images.detach().cpu().numpy(), INPUT_NAMES[1]: image_size.cpu().numpy()}
        return [torch.from_numpy(x) for x in self.session.run(list(OUTPUT_NAMES), feeds)]

    @torch.no_grad()
    def __call__(self, images: List[Tensor]) -> List[Dict[str, Tensor]]:
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise TypeError(f"images must be a non-empty list of (3, H, W) tensors, got {type(images).__name__}")
        results = []
        for image in images:
            batch, _ = self.transform([image])  # validates the image like the model does
            size = batch.image_sizes[0]
            boxes, scores, labels, masks = self.run_raw(batch.tensors, torch.tensor(size, dtype=torch.int64))
            results.append(postprocess_detections(
                boxes, scores, labels, masks, image_size=size, original_size=tuple(image.shape[-2:])))
        return results
