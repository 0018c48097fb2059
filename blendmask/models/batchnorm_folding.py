"""Fold batch norms into the convolutions that feed them, for inference.

In eval a ``FrozenBatchNorm2d`` (and an ``nn.BatchNorm2d`` using its running statistics) is the
constant per-channel affine ``y = x * scale + shift`` with ``scale = weight / sqrt(var + eps)``
and ``shift = bias - mean * scale``. When its input is the output of a convolution and nothing
else reads that output, the affine is folded into the convolution:
``W' = W * scale[:, None, None, None]`` and ``b' = b * scale + shift`` (computed in float64,
stored in the conv's dtype), and the norm becomes ``nn.Identity``. The folded model computes the
same function up to float rounding, with one pass over every backbone activation fewer.

Where a (conv, norm) pair is recognised (the dataflow must be known, so only these layouts):

- a conv owning its norm as its ``.norm`` child and applying it to its own output: the MSRA
  ResNet's and the deformable ResNet's ``ConvNorm``/``DeformConvNorm``, the panoptic head's
  conv-norm-ReLU;
- a conv directly followed by a norm inside an ``nn.Sequential`` (torchvision's MobileNetV2
  blocks, DLA's stem and projections, the basis module's and the DeepLabV3+ bottom's blocks,
  torchvision ResNet's ``downsample``);
- the named pairs of :data:`NAMED_PAIRS` (torchvision's ResNet stem and bottlenecks, DLA's
  blocks and roots), whose ``forward`` applies ``bnX`` to ``convX``'s output only.

Not foldable, left as they are: GroupNorm (FCOS towers with ``norm="GN"``: its statistics depend
on the input), and the FCOS towers' ``norm="BN"`` (one shared conv feeds one BatchNorm per FPN
level, so no single conv can absorb them).

The folded model is for inference only: its state-dict differs (convs gain a ``bias``, the norms'
buffers are gone), so :func:`fold_batchnorm` folds a copy by default, and a folded
:class:`~blendmask.models.BlendMask` refuses to train. Checkpoints are always written from the
unfolded training model.
"""
from __future__ import annotations

import copy
from typing import Dict, Tuple, Type

import torch
import torchvision
from torch import nn

from .backbone.dla import BasicBlock as DLABasicBlock
from .backbone.dla import Root as DLARoot
from .layers import FrozenBatchNorm2d

__all__ = ["fold_batchnorm", "NAMED_PAIRS", "is_foldable_norm", "INFERENCE_ONLY_ATTRIBUTE"]

#: Modules whose forward applies ``norm`` child to ``conv`` child's output, and reads that output nowhere else.
NAMED_PAIRS: Dict[Type[nn.Module], Tuple[Tuple[str, str], ...]] = {
    torchvision.models.resnet.ResNet: (("conv1", "bn1"),),
    torchvision.models.resnet.Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    torchvision.models.resnet.BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    DLABasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    DLARoot: (("conv", "bn"),),
}

#: Set to True on a model folded by :func:`fold_batchnorm`; BlendMask refuses to train it.
INFERENCE_ONLY_ATTRIBUTE = "inference_only"


def is_foldable_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a constant per-channel affine in eval: a FrozenBN, or a 2-D batch
    norm with running statistics (``nn.BatchNorm2d``; ``SyncBatchNorm`` too, which uses them in eval)."""
    if isinstance(module, (FrozenBatchNorm2d, torchvision.ops.misc.FrozenBatchNorm2d)):
        return True
    return (isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)) and module.track_running_stats
            and module.running_mean is not None and module.running_var is not None)


def _norm_affine(norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` (C,) float64 of a foldable norm: ``norm(x) == x * scale + shift``."""
    mean = norm.running_mean.double()
    var = norm.running_var.double()
    weight = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = weight * (var + norm.eps).rsqrt()
    return scale, bias - mean * scale


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Absorb ``norm`` (C_out) into ``conv`` in place: weight ``(C_out, C_in/g, kh, kw)`` scaled per
    output channel, bias ``(C_out,)`` created or updated."""
    scale, shift = _norm_affine(norm)
    if conv.out_channels != scale.numel():
        raise ValueError(f"cannot fold a norm of {scale.numel()} channels into a conv with "
                         f"{conv.out_channels} output channels")
    dtype = conv.weight.dtype
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)


def _fold_children(module: nn.Module) -> int:
    """Fold the recognised (conv, norm) pairs that are direct children of ``module`` (or
    ``module`` and its ``.norm``); returns how many were folded."""
    folded = 0
    norm = getattr(module, "norm", None)
    if isinstance(module, nn.Conv2d) and isinstance(norm, nn.Module) and is_foldable_norm(norm):
        _fold_into_conv(module, norm)
        module.norm = nn.Identity()
        folded += 1
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = module._modules[first], module._modules[second]
            if type(conv) is nn.Conv2d and is_foldable_norm(norm):
                _fold_into_conv(conv, norm)
                module._modules[second] = nn.Identity()
                folded += 1
    for cls, pairs in NAMED_PAIRS.items():
        if isinstance(module, cls):
            for conv_name, norm_name in pairs:
                conv, norm = getattr(module, conv_name), getattr(module, norm_name)
                if type(conv) is nn.Conv2d and is_foldable_norm(norm):
                    _fold_into_conv(conv, norm)
                    setattr(module, norm_name, nn.Identity())
                    folded += 1
    return folded


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` (a copy of it unless ``inplace``) in eval mode with every recognised
    (conv, FrozenBN/BatchNorm) pair folded into the conv (see the module docstring), its
    parameters without gradients, and the attribute ``inference_only = True``.

    The result computes the eval-mode output of ``model`` up to float rounding. It is for
    inference: do not train it or save it as a checkpoint (its state-dict keys differ).
    The number of folded pairs is in ``folded.folded_batchnorms``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    count = sum(_fold_children(module) for module in list(target.modules()))
    for param in target.parameters():
        param.requires_grad_(False)
    setattr(target, INFERENCE_ONLY_ATTRIBUTE, True)
    target.folded_batchnorms = count
    return target
