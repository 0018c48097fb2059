"""COCO evaluation of tiled prediction: each image of a data set read in its own dtype, predicted
tile by tile (:func:`blendmask.tiling.sliced_predict`) and scored by COCOeval with room for as
many detections per image as its tiles give (``max_dets``)."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Union

import torch
from tqdm import tqdm

from ..data.images import decode_image
from ..tiling.sliced import DEFAULT_OVERLAP, resolve_tile, sliced_predict
from .coco_eval import DEFAULT_MAX_DETS, COCOEvaluator

__all__ = ["evaluate_tiled"]


def evaluate_tiled(
    model: torch.nn.Module,
    dataset: Any,
    *,
    tile: Union[int, str] = "auto",
    overlap: float = DEFAULT_OVERLAP,
    batch_size: int = 4,
    max_dets: int = DEFAULT_MAX_DETS,
    backend: str = "pycocotools",
    max_pairs: Optional[int] = None,
    output_dir: Optional[Union[str, os.PathLike]] = None,
    progress: bool = True,
    category_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Dict[str, float]]:
    """COCO metrics of ``model`` on ``dataset`` (a :class:`~blendmask.data.CocoInstanceDataset`
    without transforms; its images read by its ``reading``), every image predicted in tiles of
    ``tile`` pixels (or ``"auto"``) sharing ``overlap``, ``batch_size`` tiles per model call.
    Every detection the model keeps is scored (no score threshold beyond the model's own);
    ``backend``, ``max_pairs`` and ``category_ids`` as for :func:`~blendmask.evaluation.evaluate_model`."""
    from ..predict import Predictor

    if getattr(dataset, "transforms", None) is not None:
        raise ValueError("evaluate_tiled: build the evaluation dataset with transforms=None")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    predictor = Predictor(model=model, class_names=list(dataset.class_names), score_threshold=0.0, device=device)
    resolve_tile(predictor.model, tile, overlap)  # refuse bad options before any work
    evaluator = COCOEvaluator(dataset, output_dir=output_dir, max_dets=max_dets, backend=backend, max_pairs=max_pairs,
                              category_ids=category_ids)
    for index in tqdm(range(len(dataset)), desc="eval (tiled)", unit="image", disable=not progress):
        info = dataset.coco.imgs[dataset.image_ids[index]]
        image = decode_image(dataset.image_path(index), reading=dataset.reading,
                             expected_size=(info["width"], info["height"]),
                             context=f"{dataset.ann_file}: image id {info['id']}: ")
        result = sliced_predict(predictor, image, tile=tile, overlap=overlap, batch_size=batch_size)
        evaluator.process([info["id"]], [result])
    return evaluator.evaluate()
