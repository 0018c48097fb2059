"""What every bottom module is (:class:`BottomModule`) and the blocks they share.

A bottom module maps backbone features to the bases that the blender crops, ``(N, K, Hb, Wb)``
at stride ``out_stride``, and in training adds the auxiliary semantic loss of its
:class:`~blendmask.models.bottom.semantic_head.SemanticHead`. The two of the package are
:class:`~blendmask.models.bottom.protonet.ProtoNet` (AdelaiDet's) and
:class:`~blendmask.models.bottom.deeplabv3plus.DeepLabV3PlusBottom` (the paper's Table 7).

Normalisation is plain BatchNorm; the model never converts itself. As AdelaiDet's SyncBN,
multi-process training synchronises the statistics: the trainer calls
:func:`blendmask.distributed.convert_sync_batchnorm` when a process group exists
(``nn.SyncBatchNorm`` on CUDA, a gloo-capable variant on the CPU).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

__all__ = ["BottomModule", "conv_block", "channels_of"]


def conv_block(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3x3 conv (Kaiming-uniform init, ``a=1``) -> norm -> ReLU; the conv has a bias only without norm."""
    if norm not in ("BN", "none"):
        raise ValueError(f"basis module norm must be 'BN' or 'none', got {norm!r}")
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=norm == "none")
    nn.init.kaiming_uniform_(conv.weight, a=1)
    layers: List[nn.Module] = [conv]
    if norm == "none":
        nn.init.constant_(conv.bias, 0.0)
    else:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def channels_of(in_channels: Union[int, Mapping[str, int]], name: str) -> int:
    """Channels of input ``name``: one int for every input, or a mapping per input name."""
    return in_channels if isinstance(in_channels, int) else in_channels[name]


class BottomModule(nn.Module):
    """Base class of the bottom modules: the attributes the model reads and the call signature.

    Attributes:
        in_features: the input names (FPN levels ``p*`` or backbone stages ``c*``); the first
            sets the output resolution.
        in_stride: stride of ``in_features[0]``.
        out_stride: stride of the bases.
        loss_on: whether training adds the semantic loss (the module then has a ``seg_head``).

    ``forward(features: {name: (N, C, H, W)}, gt_masks=None, gt_labels=None)`` returns the bases
    ``(N, K, H/out_stride, W/out_stride)`` and a dict of losses: ``{"loss_basis_sem": ...}`` in
    training with ``loss_on`` (``gt_masks``/``gt_labels``, per image ``(n, H, W)`` / ``(n,)`` in
    the padded-batch frame, are needed for it), else empty.
    """

    def __init__(self, *, in_features: Sequence[str], in_stride: int, out_stride: int, num_bases: int, loss_on: bool):
        super().__init__()
        if num_bases < 1:
            raise ValueError(f"num_bases must be >= 1, got {num_bases}")
        self.in_features: Tuple[str, ...] = tuple(in_features)
        self.in_stride = in_stride
        self.out_stride = out_stride
        self.loss_on = loss_on

    def bases(self, features: Mapping[str, Tensor]) -> Tensor:
        """The bases ``(N, K, Hb, Wb)`` of ``features``."""
        raise NotImplementedError

    def forward(
        self,
        features: Mapping[str, Tensor],
        gt_masks: Optional[Sequence[Tensor]] = None,
        gt_labels: Optional[Sequence[Tensor]] = None,
    ) -> Tuple[Tensor, Dict[str, Tensor]]:
        """Bases ``(N, K, Hb, Wb)`` and, in training with ``loss_on``, ``{"loss_basis_sem": ...}``."""
        bases = self.bases(features)
        losses: Dict[str, Tensor] = {}
        if self.training and self.loss_on:
            losses["loss_basis_sem"] = self.seg_head.loss(features[self.in_features[0]], self.in_stride, gt_masks, gt_labels)
        return bases, losses
