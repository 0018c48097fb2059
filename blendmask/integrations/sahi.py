"""BlendMask as a SAHI detection model, for users of SAHI's sliced prediction.

`SAHI <https://github.com/obss/sahi>`_ (``pip install 'blendmask[sahi]'``, an optional dependency)
cuts images into slices, runs a detection model on each and merges the results.
:class:`BlendMaskDetectionModel` implements its ``sahi.models.base.DetectionModel`` interface, so
that SAHI's prediction functions (``get_sliced_prediction``, ``get_prediction``,
``predict(detection_model=...)``) run a BlendMask weights file::

    from sahi.predict import get_sliced_prediction
    from blendmask.integrations.sahi import BlendMaskDetectionModel

    model = BlendMaskDetectionModel(model_path="model_final.pth", confidence_threshold=0.3)
    result = get_sliced_prediction("slide.png", model, slice_height=256, slice_width=256)
    result.object_prediction_list[0].mask.bool_mask

What SAHI does with the predictions is SAHI's: it merges them by their boxes and carries masks as
polygons (docs/tutorials/large-images.md compares it with :func:`blendmask.tiling.sliced_predict`,
which merges by the masks and keeps them as crops).

Categories: SAHI's category ids are the model's contiguous labels ``0 .. C - 1``, named by the
weights file's class names (``category_mapping`` ``{"0": name, ...}``, unless one is given).
Slices arrive as ``(H, W, C)`` arrays; they are made float by the weights' reading rules (8-bit:
``/ 255``; deeper: the intensity policy over the slice).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

try:
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction
    from sahi.utils.cv import get_coco_segmentation_from_bool_mask
except ImportError as error:  # sahi is optional: only this module needs it
    raise ImportError("blendmask.integrations.sahi needs the optional dependency 'sahi': "
                      "pip install 'blendmask[sahi]'") from error

from blendmask.data.images import DecodedImage
from blendmask.data.intensity import intensity_bounds
from blendmask.predict import Predictor

__all__ = ["BlendMaskDetectionModel"]


def _slice_tensor(image: np.ndarray, predictor: Predictor) -> torch.Tensor:
    """A slice ``(H, W)`` or ``(H, W, C)`` (C 1, 3 or 4: RGBA's alpha dropped) as ``(3, H, W)``
    float in ``[0, 1]`` under the predictor's reading rules."""
    pixels = image[:, :, None] if image.ndim == 2 else image
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4):
        raise ValueError(f"a SAHI slice must be (H, W) or (H, W, C) with C 1, 3 or 4, got shape {image.shape}")
    pixels = pixels[:, :, :3]
    return DecodedImage(pixels=pixels, bounds=intensity_bounds(pixels, predictor.reading.intensity)).to_tensor()


class BlendMaskDetectionModel(DetectionModel):
    """A BlendMask :class:`~blendmask.predict.Predictor` behind SAHI's ``DetectionModel``.

    Args (SAHI's, keyword): ``model_path``: a BlendMask weights file (loaded at init unless
    ``load_at_init=False``); or ``model``: a ready :class:`~blendmask.predict.Predictor` (its own
    score threshold still applies before SAHI's); ``device``; ``confidence_threshold``: detections
    scoring below it are dropped; ``mask_threshold``: mask probability at which a pixel belongs to
    an instance; ``category_mapping``: ``{"label": name}`` (default: the weights' class names);
    ``category_remapping``: as SAHI's. ``config_path`` and ``image_size`` are not used: the
    weights carry the config and the test size.
    """

    def load_model(self) -> None:
        """Load ``self.model_path`` as a :class:`~blendmask.predict.Predictor` on ``self.device``."""
        if self.model_path is None:
            raise ValueError("BlendMaskDetectionModel needs model_path (a BlendMask weights file) or model (a Predictor)")
        self.set_model(Predictor.from_weights(self.model_path, score_threshold=0.0, device=str(self.device)))

    def set_model(self, model: Any, **kwargs: Any) -> None:
        """Use ``model``, a :class:`~blendmask.predict.Predictor`; name its labels in
        ``category_mapping`` unless a mapping was given."""
        if not (hasattr(model, "predict_batch") and hasattr(model, "class_names")):
            raise TypeError(f"BlendMaskDetectionModel needs a blendmask.predict.Predictor, got {type(model).__name__}")
        self.model = model
        if self.category_mapping is None:
            self.category_mapping = {str(label): name for label, name in enumerate(model.class_names)}

    def perform_inference(self, image: np.ndarray) -> None:
        """Predict one ``(H, W, C)`` image; the raw results go to ``self._original_predictions``."""
        self.perform_batch_inference([image])

    def perform_batch_inference(self, images: List[np.ndarray]) -> None:
        """Predict the images in one model call (masks as probabilities, thresholded later at
        ``mask_threshold``)."""
        if self.model is None:
            raise RuntimeError("BlendMaskDetectionModel: no model loaded (load_model or set_model first)")
        tensors = [_slice_tensor(image, self.model) for image in images]
        self._original_predictions = self.model.predict_batch(tensors, mask_format="probs")

    def _create_object_prediction_list_from_original_predictions(
        self,
        shift_amount_list: Optional[Sequence[Any]] = ((0, 0),),
        full_shape_list: Optional[Sequence[Any]] = None,
    ) -> None:
        """SAHI's ``ObjectPrediction`` of every detection scoring at least
        ``confidence_threshold``: box ``xyxy``, label and name, score, mask as SAHI's polygons
        (SAHI then takes the box from them; a mask too small for a polygon gives the box alone);
        ``shift_amount_list[i]`` ``(x, y)`` and ``full_shape_list[i]`` ``(height, width)`` place
        image ``i`` (a slice) in its whole image."""
        results: List[Dict[str, Any]] = self._original_predictions
        shifts = _per_image(shift_amount_list, len(results), default=[0, 0])
        shapes = _per_image(full_shape_list, len(results), default=None)
        per_image = []
        for result, shift, full_shape in zip(results, shifts, shapes):
            predictions = []
            keep = (result["scores"] >= self.confidence_threshold).nonzero()[:, 0].tolist()
            for i in keep:
                label = int(result["labels"][i])
                polygons = get_coco_segmentation_from_bool_mask((result["masks"][i, 0] >= self.mask_threshold).numpy())
                predictions.append(ObjectPrediction(
                    bbox=[float(v) for v in result["boxes"][i]], category_id=label,
                    category_name=self.category_mapping.get(str(label), str(label)),
                    segmentation=polygons or None,  # a mask too small for a polygon: the box alone
                    score=float(result["scores"][i]), shift_amount=list(shift),
                    full_shape=None if full_shape is None else list(full_shape)))
            per_image.append(predictions)
        self._object_prediction_list_per_image = per_image

    @property
    def num_categories(self) -> int:
        """The number of categories (labels) of the model."""
        return len(self.category_mapping)

    @property
    def has_mask(self) -> bool:
        """BlendMask predicts masks."""
        return True

    @property
    def category_names(self) -> List[str]:
        """The categories' names, by label."""
        return list(self.category_mapping.values())


def _per_image(values: Optional[Sequence[Any]], count: int, *, default: Any) -> List[Any]:
    """SAHI's per-image list (``[[a, b], ...]``, or one ``[a, b]`` for a single image) as ``count`` entries."""
    if values is None:
        return [default] * count
    values = list(values)
    if values and not isinstance(values[0], (list, tuple)):
        values = [values]
    if len(values) != count:
        raise ValueError(f"SAHI gave {len(values)} shifts or shapes for {count} images")
    return values
