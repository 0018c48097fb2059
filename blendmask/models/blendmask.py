"""BlendMask meta-architecture: backbone + FPN, FCOS, basis module, top layer and blender.

API as torchvision's detection models (see :class:`BlendMask`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..blend_modes import MERGE_MODES, BottomInterp, Merge, Normalize, TopInterp
from ..ops import Blender, blend
from .bottom import BottomModule
from .fcos import FCOS
from .fcos.fcos import FCOSPositives
from .fcos.head import FCOSHeadOutputs
from .fcos.detections import clip_boxes
from .batchnorm_folding import INFERENCE_ONLY_ATTRIBUTE
from .mask_ops import MASK_THRESHOLD, crop_and_resize_masks, paste_masks_in_image, paste_masks_rle
from .top_layer import TopLayer
from .transform import postprocess_boxes

__all__ = ["BlendMask", "MASK_FORMATS", "postprocess_detections"]

#: What the eval output carries as masks: ``"probs"`` ``masks (n, 1, H, W)`` float probabilities
#: (torchvision's API), ``"binary"`` ``masks (n, 1, H, W)`` bool, binarised at 0.5 chunk by chunk
#: (what AdelaiDet/detectron2 return; a quarter of the memory), or ``"rle"`` ``masks_rle``, n COCO
#: RLE dicts of the masks binarised at 0.5 (:func:`~blendmask.models.mask_ops.paste_masks_rle`: no
#: image-sized mask is ever held).
MASK_FORMATS = ("probs", "binary", "rle")


def postprocess_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    masks: Tensor,
    *,
    image_size: Sequence[int],
    original_size: Sequence[int],
    mask_format: str = "probs",
) -> Dict[str, Any]:
    """Rescale one image's boxes to its original size, paste the masks into it, clip the boxes.

    The border rule (docs/design.md §10): each ``R x R`` mask was blended over its whole,
    unclipped predicted box, so it is pasted with that same box (rescaled), cut at the image
    border; the reported box is that box clipped to the image. (AdelaiDet pastes into the
    clipped box, which squeezes masks of objects cut by the border.)

    Shared by the eval path of :class:`BlendMask` and the exported graphs' callers
    (:class:`blendmask.deploy.OnnxPredictor`, and after :func:`blendmask.deploy.export_program`).

    Args:
        boxes: ``(n, 4)`` xyxy boxes in the resized image of size ``image_size``, unclipped
            (the boxes the masks were blended with, as :meth:`BlendMask.detect` returns them).
        scores: ``(n,)`` scores.
        labels: ``(n,)`` integer labels.
        masks: ``(n, R, R)`` mask probabilities inside the boxes.
        image_size: ``(h, w)`` of the resized image (before padding).
        original_size: ``(H, W)`` of the image given by the user.
        mask_format: ``"probs"``, ``"binary"`` or ``"rle"`` (:data:`MASK_FORMATS`).
    Returns:
        ``dict(boxes (n, 4), labels (n,) int64, scores (n,), masks (n, 1, H, W))`` with boxes
        clipped to ``[0, W] x [0, H]`` and masks as probabilities in ``[0, 1]``, zero outside
        the boxes: the eval output of the model. With ``mask_format="binary"`` the masks are
        bool, binarised at 0.5; with ``"rle"``, ``masks_rle`` (n COCO RLE dicts, binarised at 0.5)
        replaces ``masks``.

    Example, after an ONNX session::

        boxes, scores, labels, masks = session.run(None, {"images": x, "image_size": size})
        result = postprocess_detections(torch.from_numpy(boxes), torch.from_numpy(scores),
                                        torch.from_numpy(labels), torch.from_numpy(masks),
                                        image_size=(h, w), original_size=(H, W))
        binary = result["masks"] > 0.5   # (n, 1, H, W)
    """
    n = boxes.shape[0]
    if boxes.shape != (n, 4) or scores.shape != (n,) or labels.shape != (n,) or masks.dim() != 3 or masks.shape[0] != n:
        raise ValueError(
            "expected boxes (n, 4), scores (n,), labels (n,) and masks (n, R, R) with the same n, got "
            f"{tuple(boxes.shape)}, {tuple(scores.shape)}, {tuple(labels.shape)} and {tuple(masks.shape)}"
        )
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    size = (int(original_size[0]), int(original_size[1]))
    boxes = postprocess_boxes(boxes, image_size, original_size)  # unclipped: the boxes blended with
    result: Dict[str, Any] = {"boxes": clip_boxes(boxes, size), "labels": labels.to(torch.int64), "scores": scores}
    if mask_format == "rle":
        result["masks_rle"] = paste_masks_rle(masks, boxes, size)
    elif mask_format == "binary":
        result["masks"] = paste_masks_in_image(masks, boxes, size, threshold=MASK_THRESHOLD)
    else:
        result["masks"] = paste_masks_in_image(masks, boxes, size)
    return result


#: The assembler's logit for the bases a region does not take: ``exp(-1e4)`` is 0 in float32 (and
#: ``-1e4`` fits in float16), so the softmax over K is exactly one-hot.
_ASSEMBLER_OFF_LOGIT = -1e4


def assembler_attention_logits(num_bases: int, attn_size: int) -> Tensor:
    """The assembler's fixed attention logits ``(K, M, M)`` float32, ``K = M*M``: region ``(i, j)``
    of the ``M x M`` grid has logit 0 for base ``i*M + j`` and :data:`_ASSEMBLER_OFF_LOGIT` for the
    others, so its softmax over K is exactly one-hot (FCIS's position-sensitive assembly)."""
    if num_bases != attn_size * attn_size:
        raise ValueError(f"assembler needs num_bases == attn_size**2, got {num_bases} and {attn_size}")
    one_hot = torch.eye(num_bases).reshape(num_bases, attn_size, attn_size)  # [k, i, j] = (k == i*M + j)
    return (1.0 - one_hot) * _ASSEMBLER_OFF_LOGIT


#: Probabilities are clamped into [eps, 1 - eps] before the log of the BCE (float32: log(1e-6) = -13.8).
_PROBABILITY_EPS = 1e-6


def _bce_on_probabilities(probs: Tensor, targets: Tensor) -> Tensor:
    """Per-pixel binary cross-entropy of probabilities ``probs`` against ``targets`` (same
    shape), in float32 and clamped so that neither log sees 0 (autocast-safe, unlike
    ``F.binary_cross_entropy``). The clamp stops the gradient only where a pixel is already
    within 1e-6 of its target side."""
    p = probs.float().clamp(_PROBABILITY_EPS, 1.0 - _PROBABILITY_EPS)
    t = targets.float()
    return -(t * p.log() + (1.0 - t) * torch.log1p(-p))


class BlendMask(nn.Module):
    """BlendMask (Chen et al., CVPR 2020), FCOS-based and AdelaiDet-compatible.

    Call it like torchvision's detection models:

    - training, ``model(images, targets)`` returns a dict of scalar losses: ``loss_fcos_cls``,
      ``loss_fcos_loc``, ``loss_fcos_ctr``, ``loss_mask`` and (when the basis module's semantic
      loss is on) ``loss_basis_sem``;
    - eval, ``model(images)`` returns one dict per image with ``boxes (n, 4)`` float xyxy,
      ``labels (n,)`` int64, ``scores (n,)`` and ``masks (n, 1, H, W)`` mask probabilities in
      ``[0, 1]``, all in that input image's own size ``(H, W)``. Binarise the masks at 0.5.

    ``images`` are a list of float RGB ``(3, H, W)`` tensors in ``[0, 1]``, of any sizes; the model
    resizes, normalises and pads them itself. ``targets`` are dicts with ``boxes (n, 4)`` float
    xyxy pixels, ``labels (n,)`` int64 in ``[0, num_classes)`` and ``masks (n, H, W)`` uint8/bool.

    Set the attribute ``mask_format = "rle"`` to get, in eval, ``masks_rle`` (n COCO RLE dicts of
    the masks binarised at 0.5) instead of ``masks``: pasted and encoded a bounded chunk at a time,
    its memory does not grow with ``n x H x W`` (what ``blendmask eval`` and ``predict`` use). Set it
    to ``"binary"`` for bool ``masks (n, 1, H, W)`` binarised at 0.5 (pasted straight to bools).

    Set the attribute ``return_internals = True`` to add, in eval, ``"bases"`` ``(K, Hb, Wb)``
    (the bases at stride 4 of the resized image, cropped to its unpadded extent) and ``"attns"``
    ``(n, K, M, M)`` (the detections' attention logits, before the softmax) to every result.

    Masks: in training the bases are cropped with the GT boxes and the attentions are taken at
    every FCOS positive; the loss is the per-instance mean BCE against the GT masks cropped and
    resized to ``R x R``, weighted by the centerness targets and divided by their sum. In eval,
    the crop and the paste use the same box: the masks are blended with the whole, unclipped
    predicted box (the box the attentions were predicted for) and pasted with that same box,
    cut at the image border; the reported box is clipped to the image (docs/design.md §10 compares
    this rule with AdelaiDet's).

    The blender's settings (``bottom_resolution`` as its ``output_size``, ``top_interp``,
    ``normalize``, ``bottom_interp``, ``sampling_ratio``, ``aligned``) are held by ``self.blender``,
    a :class:`blendmask.ops.Blender` with ``spatial_scale = 1 / basis_module.out_stride``; their
    modes are those of :mod:`blendmask.blend_modes`.

    Args:
        backbone: module mapping normalised ``(N, 3, H, W)`` images to a dict of FPN maps.
        transform: resizes, normalises and batches images/targets
            (:class:`blendmask.models.transform.ImageTransform`).
        proposal_generator: the :class:`FCOS` detector.
        basis_module: the bottom module (:class:`~blendmask.models.bottom.BottomModule`: the
            :class:`~blendmask.models.bottom.ProtoNet` or the :class:`~blendmask.models.bottom.DeepLabV3PlusBottom`).
        fcos_in_features: FPN level names FCOS runs on, one per FCOS stride.
        in_channels: FPN channels (input of the top layer).
        num_classes: foreground classes.
        num_bases: K.
        attn_size: M, the attention resolution.
        bottom_resolution: R, the blended mask resolution.
        top_interp: ``"bilinear"`` or ``"nearest"`` attention upsampling.
        normalize: ``"softmax"`` over K (the blend is a mask logit) or ``"sigmoid"`` (the
            paper's one-basis blender: ``sum_k sigmoid(a_k) sigmoid(r_k)``; the model's mask
            probability is that sum divided by K, so ``[0, 1]`` for any K and exactly the
            paper's for K = 1). K = 1 needs ``"sigmoid"``: a softmax over one basis is 1.
        bottom_interp: ``"bilinear"`` (RoIAlign) or ``"nearest"`` (RoIPool-style) bases crop.
        merge: ``"blender"`` (attentions from the learned top layer) or ``"assembler"`` (the
            paper's FCIS analogue, Table 1: no top layer; the attentions are the constant buffer
            ``assembler_logits (K, M, M)`` of :func:`assembler_attention_logits`, so region
            ``(i, j)`` of the nearest-upsampled ``M x M`` grid is the crop of base ``i*M + j``;
            needs ``K = M*M``, ``top_interp="nearest"`` and ``normalize="softmax"``).
        sampling_ratio, aligned: RoIAlign parameters of the bases crop.
        return_internals: initial value of the ``return_internals`` attribute.
        mask_format: initial value of the ``mask_format`` attribute (:data:`MASK_FORMATS`).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        transform: nn.Module,
        proposal_generator: FCOS,
        basis_module: BottomModule,
        fcos_in_features: Sequence[str],
        in_channels: int,
        num_classes: int,
        num_bases: int,
        attn_size: int,
        bottom_resolution: int,
        top_interp: TopInterp = "bilinear",
        normalize: Normalize = "softmax",
        bottom_interp: BottomInterp = "bilinear",
        merge: Merge = "blender",
        sampling_ratio: int = 1,
        aligned: bool = True,
        return_internals: bool = False,
        mask_format: str = "probs",
    ):
        super().__init__()
        blender = Blender(output_size=bottom_resolution, spatial_scale=1.0 / basis_module.out_stride,
                          sampling_ratio=sampling_ratio, aligned=aligned, top_interp=top_interp, normalize=normalize,
                          bottom_interp=bottom_interp)
        if merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
        if merge == "assembler" and (num_bases != attn_size * attn_size or top_interp != "nearest"
                                     or normalize != "softmax"):
            raise ValueError(
                "model.blender.merge='assembler' needs model.basis.num_bases == model.blender.attn_size**2, "
                "model.blender.top_interp='nearest' and model.blender.normalize='softmax', got num_bases="
                f"{num_bases}, attn_size={attn_size}, top_interp={top_interp!r}, normalize={normalize!r}"
            )
        if num_bases == 1 and normalize == "softmax":
            raise ValueError(
                "num_bases=1 with normalize='softmax': a softmax over one basis is the constant 1, so the "
                "attention would do nothing; set model.blender.normalize='sigmoid' (the paper's one-basis blender)"
            )
        if attn_size < 1 or bottom_resolution < 1:
            raise ValueError(f"attn_size and bottom_resolution must be >= 1, got {attn_size} and {bottom_resolution}")
        if len(fcos_in_features) != len(proposal_generator.strides):
            raise ValueError(f"fcos_in_features {list(fcos_in_features)} do not match FCOS strides {proposal_generator.strides}")
        self.backbone = backbone
        self.transform = transform
        self.proposal_generator = proposal_generator
        self.basis_module = basis_module
        self.blender = blender
        self.fcos_in_features = tuple(fcos_in_features)
        self.num_classes = num_classes
        self.num_bases = num_bases
        self.attn_size = attn_size
        self.return_internals = return_internals
        self.mask_format = mask_format
        self.merge = merge
        self.top_layer: Optional[TopLayer] = None
        if merge == "assembler":  # a constant of the config, not a weight: kept out of the state dict
            self.register_buffer("assembler_logits", assembler_attention_logits(num_bases, attn_size), persistent=False)
        else:
            self.top_layer = TopLayer(in_channels, num_bases * attn_size * attn_size)

    def train(self, mode: bool = True) -> "BlendMask":
        """As ``nn.Module.train``; refused on a model folded for inference
        (:func:`blendmask.models.optimize_for_inference`), whose batch norms are gone."""
        if mode and getattr(self, INFERENCE_ONLY_ATTRIBUTE, False):
            raise RuntimeError("this BlendMask was folded for inference (blendmask.models.optimize_for_inference): "
                               "its batch norms are folded into the convolutions; train the original model")
        return super().train(mode)

    def attentions(self, head: FCOSHeadOutputs, locations: Tensor) -> Tensor:
        """``(P, K*M*M)`` attention logits at ``locations`` ``(P,)`` (indices in FCOS's flattened
        location order, :func:`~blendmask.models.fcos.fcos.flatten_levels`): the top layer on the
        box towers, evaluated at those locations only (:meth:`TopLayer.at
        <blendmask.models.top_layer.TopLayer.at>`); for the assembler, the constant
        :func:`assembler_attention_logits` in every row."""
        if self.top_layer is None:
            return self.assembler_logits.reshape(1, -1).expand(locations.shape[0], -1)
        return self.top_layer.at(head.bbox_towers, locations)

    def blend_masks(self, bases: Tensor, attns: Tensor, rois: Tensor, *, blender: Callable[..., Tensor] = blend) -> Tensor:
        """``(D, R, R)`` blended masks from bases ``(N, K, Hb, Wb)``, flat attentions ``(D, K*M*M)``, rois ``(D, 5)``:
        logits (``normalize="softmax"``) or sums of K probabilities (``"sigmoid"``); see
        :meth:`mask_probabilities`.

        ``blender`` is :func:`blendmask.ops.blend` (the fused op) or
        :func:`blendmask.ops.blend_reference` (standard ops, for the ONNX export); ``self.blender``
        calls it with its settings.
        """
        attns = attns.reshape(-1, self.num_bases, self.attn_size, self.attn_size)
        return self.blender(bases, attns, rois, function=blender)

    def mask_probabilities(self, blended: Tensor) -> Tensor:
        """Mask probabilities ``(D, R, R)`` in ``[0, 1]`` from :meth:`blend_masks`: the sigmoid of
        the logits (``"softmax"``), or the blend divided by K (``"sigmoid"``: no second sigmoid)."""
        if self.blender.normalize == "sigmoid":
            return blended / self.num_bases
        return blended.sigmoid()

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        """Losses (training) or detections (eval); see the class docstring."""
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            if isinstance(targets, (list, tuple)):
                for i, t in enumerate(targets):
                    if isinstance(t, dict) and "masks" not in t:
                        raise ValueError(f"targets[{i}] needs 'masks' (n, H, W) uint8/bool to train BlendMask")
        # the transform validates images and targets (shapes, dtypes, degenerate boxes, label range)
        batch, targets = self.transform(images, targets if self.training else None)
        if self.training:
            return self._losses(*self._heads(batch.tensors), targets)
        if self.mask_format not in MASK_FORMATS:
            raise ValueError(f"BlendMask.mask_format must be one of {MASK_FORMATS}, got {self.mask_format!r}")
        original_sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
        detections = self.detect(batch.tensors, batch.image_sizes)
        return self._postprocess(detections, batch.image_sizes, original_sizes)

    def _heads(self, images: Tensor) -> Tuple[Dict[str, Tensor], FCOSHeadOutputs]:
        """Backbone and FCOS head of a normalised padded batch ``(N, 3, Hp, Wp)``: the FPN maps by
        name and the head outputs. The top layer runs later, where its attentions are read
        (:meth:`attentions`)."""
        features = self.backbone(images)
        return features, self.proposal_generator([features[f] for f in self.fcos_in_features])

    def detect(
        self,
        images: Tensor,
        image_sizes: Sequence[Union[Tuple[int, int], Tensor]],
        *,
        blender: Callable[..., Tensor] = blend,
    ) -> List[Dict[str, Tensor]]:
        """Detections of a transformed batch, before they are mapped back to the input images.

        The inference pipeline shared by the eval path (:meth:`forward`) and the exported graphs
        (:class:`blendmask.deploy.InferenceGraph`), so it has no data-dependent Python branch:
        backbone and FPN, FCOS head (:meth:`_heads`), basis module, FCOS decoding and NMS
        (:meth:`FCOS.predict <blendmask.models.fcos.FCOS.predict>`), the top layer at the kept
        detections' locations (:meth:`attentions`), then one blend over every image's
        detections, cropped with their whole, unclipped boxes (the boxes the attentions were
        predicted for, and the boxes :func:`postprocess_detections` pastes with). Call it in
        eval mode.

        Args:
            images: ``(N, 3, Hp, Wp)`` normalised, zero-padded images, as ``self.transform``
                produces them (``batch.tensors``).
            image_sizes: per image the ``(h, w)`` of the resized image before padding: Python
                ints, or a ``(2,)`` int64 tensor (a traced input of the exported graph).
            blender: :func:`blendmask.ops.blend` (the fused op) or
                :func:`blendmask.ops.blend_reference` (standard ops, for ONNX).
        Returns:
            one dict per image, sorted by decreasing score, ``n <= post_nms_topk``:
            ``boxes (n, 4)`` float xyxy in the resized image's pixels, unclipped (none is
            empty once clipped to the image);
            ``scores (n,)``; ``labels (n,)`` int64; ``masks (n, R, R)`` mask probabilities
            inside the boxes; ``attns (n, K, M, M)`` attention logits (before the softmax);
            ``bases (K, Hp / s, Wp / s)`` the image's bases at the basis stride ``s``, padding
            included.
        """
        return self._detect_from_heads(*self._heads(images), image_sizes, blender=blender)

    def _detect_from_heads(
        self,
        features: Dict[str, Tensor],
        head: FCOSHeadOutputs,
        image_sizes: Sequence[Union[Tuple[int, int], Tensor]],
        *,
        blender: Callable[..., Tensor] = blend,
    ) -> List[Dict[str, Tensor]]:
        """:meth:`detect` after :meth:`_heads` (whose outputs ``features`` and ``head`` are): for
        callers that reuse the backbone features (the panoptic model's semantic head)."""
        bases, _ = self.basis_module(features)
        detections = self.proposal_generator.predict(head, image_sizes)
        rois = torch.cat([  # (D, 5) [image index, x0, y0, x1, y1], float32 (FCOS decodes in float32)
            torch.cat([d["boxes"].new_full((d["boxes"].shape[0], 1), float(i)), d["boxes"]], dim=1)
            for i, d in enumerate(detections)
        ])
        attns = self.attentions(head, torch.cat([d["locations"] for d in detections]))  # (D, K*M*M)
        mask_probs = self.mask_probabilities(self.blend_masks(bases, attns, rois, blender=blender).float())  # (D, R, R) float32
        counts = [d["boxes"].shape[0] for d in detections]
        return [
            {
                "boxes": d["boxes"],
                "scores": d["scores"],
                "labels": d["labels"],
                "masks": probs,
                "attns": a.reshape(-1, self.num_bases, self.attn_size, self.attn_size),
                "bases": bases[i],
            }
            for i, (d, probs, a) in enumerate(zip(detections, mask_probs.split(counts), attns.split(counts)))
        ]

    def _losses(self, features: Dict[str, Tensor], head: FCOSHeadOutputs, targets) -> Dict[str, Tensor]:
        gt_boxes = [t["boxes"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        gt_masks = [t["masks"] for t in targets]
        bases, losses = self.basis_module(features, gt_masks, gt_labels)
        fcos_losses, positives = self.proposal_generator.losses(head, gt_boxes, gt_labels)
        losses.update(fcos_losses)
        attns = self.attentions(head, positives.locations)
        losses["loss_mask"] = self._mask_loss(bases, attns, positives, gt_boxes, gt_masks)
        return losses

    def _mask_loss(self, bases: Tensor, attns: Tensor, positives: FCOSPositives, gt_boxes: List[Tensor],
                   gt_masks: List[Tensor]) -> Tensor:
        """The mask loss of the positives, whose ``(Np, K*M*M)`` attention logits are ``attns``."""
        if positives.gt_inds.numel() == 0:
            return attns.sum() * 0.0 + bases.sum() * 0.0  # keeps the graph connected
        boxes = torch.cat(gt_boxes).to(torch.float32)  # rois stay float32 whatever the bases' dtype (autocast)
        image_idx = torch.cat([torch.full((b.shape[0],), float(i), device=boxes.device, dtype=boxes.dtype) for i, b in enumerate(gt_boxes)])
        rois = torch.cat([image_idx[:, None], boxes], dim=1)[positives.gt_inds]  # (Np, 5)
        blended = self.blend_masks(bases, attns, rois)  # (Np, R, R)
        mask_targets = torch.cat(
            [crop_and_resize_masks(m, b, self.blender.output_size) for m, b in zip(gt_masks, gt_boxes)]
        )[positives.gt_inds]
        if self.blender.normalize == "sigmoid":
            per_pixel = _bce_on_probabilities(self.mask_probabilities(blended), mask_targets)
        else:
            per_pixel = F.binary_cross_entropy_with_logits(blended, mask_targets.to(blended.dtype), reduction="none")
        per_instance = per_pixel.flatten(1).mean(1)
        return (per_instance * positives.ctr_targets).sum() / positives.loss_denorm

    def _postprocess(self, detections: List[Dict[str, Tensor]], image_sizes: Sequence[Tuple[int, int]],
                     original_sizes: Sequence[Tuple[int, int]]) -> List[Dict[str, Tensor]]:
        """:meth:`detect`'s output -> the eval output (class docstring): boxes in the input images'
        sizes, masks pasted into them, and with ``return_internals`` the bases and attentions."""
        results = []
        for det, size, orig in zip(detections, image_sizes, original_sizes):
            result = postprocess_detections(
                det["boxes"], det["scores"], det["labels"], det["masks"], image_size=size, original_size=orig,
                mask_format=self.mask_format,
            )
            if self.return_internals:
                stride = self.basis_module.out_stride
                hb, wb = math.ceil(size[0] / stride), math.ceil(size[1] / stride)
                result["bases"] = det["bases"][:, :hb, :wb]
                result["attns"] = det["attns"]
            results.append(result)
        return results
