"""Convert AdelaiDet BlendMask checkpoints (detectron2 ``.pth``) into blendmask weights files.

Our modules mirror AdelaiDet's names (``backbone.bottom_up.*`` in the MSRA layout,
``backbone.fpn_*``, ``backbone.top_block.*``, ``proposal_generator.fcos_head.*``,
``basis_module.*``, ``top_layer``), so the conversion is mostly bookkeeping:

- the ``{"model": ...}`` wrapper (and a DistributedDataParallel ``module.`` prefix) is removed;
- the old FCOS name ``centerness`` becomes ``ctrness``;
- the panoptic models' semantic head ``panoptic_module.*`` (detectron2's ``SemSegFPNHead``) becomes
  ``sem_seg_head.*``;
- detectron2-only buffers (``pixel_mean``, ``pixel_std``) are dropped;
- BN buffers are reconciled with the target model: ``num_batches_tracked`` is dropped where
  we use FrozenBN and filled with 0 where we use a trainable BN.

Nothing is loaded silently: every key that is still missing, unexpected or of the wrong
shape is listed in a :class:`ConversionReport`, with a sentence naming the architecture
difference when one explains them (ResNet depth, deformable convs, DLA-34, FPN levels, the
FCOS head's norm), and :func:`convert_checkpoint` refuses to
write a file unless the result loads into the model with ``strict=True``.
Files are read by :func:`blendmask.serialization.read_state_dict` (``torch.load(weights_only=True)``,
so a checkpoint cannot run code) and written by :func:`blendmask.serialization.atomic_save`.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .config import BlendMaskConfig, get_config
from .output_guard import guard_output_file
from .serialization import atomic_save, read_state_dict

__all__ = ["ConversionError", "ConversionReport", "architecture_notes", "from_adelaidet", "convert_state_dict",
           "match_state_dict", "convert_checkpoint"]

_RENAMES = (("proposal_generator.fcos_head.centerness.", "proposal_generator.fcos_head.ctrness."),
            # AdelaiDet's panoptic BlendMask names detectron2's SemSegFPNHead "panoptic_module"
            ("panoptic_module.", "sem_seg_head."))
_DROPPED = ("pixel_mean", "pixel_std")
_CLS_LOGITS = "proposal_generator.fcos_head.cls_logits.weight"
_BN_COUNTER = "num_batches_tracked"


class ConversionError(ValueError):
    """The checkpoint does not fit the target model; the message holds the full report."""


@dataclass
class ConversionReport:
    """What the conversion did and what did not fit."""

    renamed: List[Tuple[str, str]] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    filled: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatches: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def summary(self, limit: int = 20) -> str:
        def listed(items: List[Any]) -> str:
            shown = ", ".join(str(i) for i in items[:limit])
            return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")

        lines = [f"renamed {len(self.renamed)}, dropped {len(self.dropped)}, filled {len(self.filled)} keys"]
        lines += [f"note: {note}" for note in self.notes]
        if self.missing:
            lines.append(f"MISSING in checkpoint ({len(self.missing)}): {listed(self.missing)}")
        if self.unexpected:
            lines.append(f"UNEXPECTED in checkpoint ({len(self.unexpected)}): {listed(self.unexpected)}")
        if self.shape_mismatches:
            shown = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in self.shape_mismatches]
            lines.append(f"SHAPE MISMATCH ({len(shown)}): {listed(shown)}")
        return "\n".join(lines)


def _unwrap(checkpoint: Any) -> Mapping[str, Any]:
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"an AdelaiDet checkpoint must be a dict (state dict or {{'model': state dict}}), "
                        f"got {type(checkpoint).__name__}")
    if "model" in checkpoint:
        checkpoint = checkpoint["model"]
        if not isinstance(checkpoint, Mapping):
            raise TypeError(f"checkpoint['model'] must be a state dict, got {type(checkpoint).__name__}")
    if not checkpoint:
        raise ValueError("the checkpoint's state dict is empty")
    return checkpoint


def convert_state_dict(checkpoint: Any) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """Rename an AdelaiDet state dict to our names; see :func:`from_adelaidet`. Also returns the report
    of renamed and dropped keys (missing/unexpected keys need a model: :func:`match_state_dict`)."""
    report = ConversionReport()
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, value in _unwrap(checkpoint).items():
        if not isinstance(key, str):
            raise TypeError(f"state dict keys must be strings, got {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} must be a Tensor, got {type(value).__name__}")
        new_key = key[len("module."):] if key.startswith("module.") else key
        if new_key.rsplit(".", 1)[-1] in _DROPPED:
            report.dropped.append(key)
            continue
        for old, new in _RENAMES:
            if new_key.startswith(old):
                new_key = new + new_key[len(old):]
        if new_key != key:
            report.renamed.append((key, new_key))
        if new_key in converted:
            raise ValueError(f"two checkpoint keys map to {new_key!r} (e.g. both 'centerness' and 'ctrness')")
        converted[new_key] = value
    return converted, report


def from_adelaidet(state_dict: Any) -> "OrderedDict[str, torch.Tensor]":
    """AdelaiDet/detectron2 BlendMask state dict (optionally ``{"model": ...}``) -> our key names.

    Raises ``TypeError`` for a non-dict or non-tensor values. BN buffers are reconciled, and
    unknown/missing keys reported, by :func:`match_state_dict` against the target model.
    """
    return convert_state_dict(state_dict)[0]


def match_state_dict(converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                     report: Optional[ConversionReport] = None
                     ) -> Tuple["OrderedDict[str, torch.Tensor]", ConversionReport]:
    """Fit ``converted`` to a model's ``expected`` state dict, key order and BN buffers included.

    ``num_batches_tracked`` counters absent from ``expected`` (FrozenBN) are dropped; counters
    that ``expected`` has but the checkpoint lacks (FrozenBN checkpoint into a trainable BN)
    are filled with 0. Missing/unexpected keys and shape mismatches go to the report; only
    the keys that fit are returned.
    """
    report = report if report is not None else ConversionReport()
    matched: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, target in expected.items():
        if key in converted:
            value = converted[key]
            if tuple(value.shape) != tuple(target.shape):
                report.shape_mismatches.append((key, tuple(value.shape), tuple(target.shape)))
            else:
                matched[key] = value
        elif key.endswith(_BN_COUNTER):
            matched[key] = torch.zeros_like(target)
            report.filled.append(key)
        else:
            report.missing.append(key)
    for key in converted:
        if key not in expected:
            if key.endswith(_BN_COUNTER):
                report.dropped.append(key)
            else:
                report.unexpected.append(key)
    if not report.ok:
        report.notes.extend(architecture_notes(converted, expected))
    return matched, report


_BOTTOM_UP = "backbone.bottom_up."
_TOWER_BN = re.compile(r"^proposal_generator\.fcos_head\.\w+_tower\.\d+\.\d+\.running_mean$")
_TOWER_WEIGHT = re.compile(r"^proposal_generator\.fcos_head\.\w+_tower\.\d+\.weight$")


def _architecture(state: Mapping[str, Any]) -> Dict[str, str]:
    """What a BlendMask state dict's names (and tower weight ranks) say about its architecture."""
    names = set(state)
    facts: Dict[str, str] = {}
    if any(k.startswith(_BOTTOM_UP + "level") for k in names):
        facts["backbone"] = "DLA-34"
    elif any(k.startswith(_BOTTOM_UP + "res4.") for k in names):
        res4 = {int(k.split(".")[3]) for k in names if k.startswith(_BOTTOM_UP + "res4.")}
        depth = {6: "ResNet-50", 23: "ResNet-101"}.get(max(res4) + 1, f"a ResNet with {max(res4) + 1} res4 blocks")
        offsets = sorted({".".join(k.split(".")[2:4]) for k in names if ".conv2_offset." in k},
                         key=lambda b: (b.split(".")[0], int(b.split(".")[1])))
        facts["backbone"] = depth + (f" with deformable convs in {', '.join(offsets)}" if offsets else
                                     " without deformable convs")
    if any(k.startswith("backbone.fpn_") for k in names):
        top = "p7" if "backbone.top_block.p7.weight" in names else "p6" if "backbone.top_block.p6.weight" in names else "p5"
        first = "P2" if "backbone.fpn_lateral2.weight" in names else "P3"
        facts["FPN levels"] = f"{first}-{top.upper()}"
    facts["semantic (panoptic) branch"] = ("present" if any(k.startswith("sem_seg_head.") for k in names)
                                           else "absent")
    tower_weights = [state[k] for k in names if _TOWER_WEIGHT.match(k)]
    if any(_TOWER_BN.match(k) for k in names):
        facts["FCOS head norm"] = "per-level BN"
    elif tower_weights:  # GN weights are 1-d, conv weights 4-d
        facts["FCOS head norm"] = "GN" if any(getattr(w, "dim", lambda: 4)() == 1 for w in tower_weights) else "none"
    return facts


def architecture_notes(converted: Mapping[str, Any], expected: Mapping[str, Any]) -> List[str]:
    """Sentences naming where the checkpoint's architecture differs from the target model's."""
    ours, theirs = _architecture(expected), _architecture(converted)
    return [f"the checkpoint's {aspect} is {theirs[aspect]}, but the config's model has {ours[aspect]}"
            for aspect in ours if aspect in theirs and theirs[aspect] != ours[aspect]]


def convert_checkpoint(in_path: Union[str, os.PathLike], out_path: Union[str, os.PathLike], config_name: str,
                       *, overrides: Optional[Mapping[str, Any]] = None, overwrite: bool = False
                       ) -> ConversionReport:
    """Convert the AdelaiDet checkpoint ``in_path`` for preset ``config_name`` and write ``out_path``.

    The output is ``{"model": state_dict, "config": cfg.to_dict()}``. ``model.num_classes`` is
    taken from the checkpoint's classifier when it differs from the preset (noted in the report).
    Raises :class:`ConversionError` (with the report) unless every key fits and the result loads
    into the model with ``strict=True``; nothing is written in that case. ``out_path`` must not
    be a directory, nor an existing file unless ``overwrite``. The file is written atomically (:func:`blendmask.serialization.atomic_save`):
    a failure leaves ``out_path`` as it was and no temporary file. The conversion holds the
    output guard of ``out_path`` (:func:`blendmask.output_guard.guard_output_file`).
    """
    from .models import build_model  # deferred: the model package imports this package's config

    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.is_dir():
        raise ValueError(f"output {out_path} is a directory: give the path of the weights file to write")
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"output {out_path} exists; choose another path, or pass overwrite=True "
                              "(--overwrite) to replace it")
    with guard_output_file(out_path, option="output", command="blendmask convert", overwrite=overwrite):
        checkpoint = read_state_dict(in_path, what="checkpoint", wrappers=("model",))
        converted, report = convert_state_dict(checkpoint)
        cfg = get_config(config_name, overrides)
        cls_logits = converted.get(_CLS_LOGITS)
        if cls_logits is not None and cls_logits.dim() >= 1 and cls_logits.shape[0] != cfg.model.num_classes:
            report.notes.append(f"model.num_classes set to {cls_logits.shape[0]} from the checkpoint's classifier "
                                f"(preset {config_name!r} has {cfg.model.num_classes})")
            data = cfg.to_dict()
            data["model"]["num_classes"] = int(cls_logits.shape[0])
            cfg = BlendMaskConfig.from_dict(data)
        model = build_model(cfg)
        matched, report = match_state_dict(converted, model.state_dict(), report)
        if not report.ok:
            raise ConversionError(f"{in_path} does not fit the {config_name!r} model:\n{report.summary()}")
        model.load_state_dict(matched, strict=True)
        atomic_save({"model": matched, "config": cfg.to_dict()}, out_path)
        return report
