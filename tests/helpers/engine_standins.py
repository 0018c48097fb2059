"""Stand-ins for engine tests: a tiny detector-shaped model and a tiny augmented data set.

They follow the package's contracts (``model(images, targets) -> dict of losses``; a data set of
``(image (3,H,W) float, target dict)``) without depending on the real model, so the training loop,
checkpoints and DDP are tested fast and in isolation.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class TinyDetector(nn.Module):
    """Predicts each image's mean box from pooled conv features; returns two losses.
    Has a BatchNorm layer so SyncBN conversion is exercised; ``dropout > 0`` makes every training
    step draw from torch's global RNG (so resume tests see whether each rank's RNG is restored)."""

    def __init__(self, *, loss_scale: float = 1.0, dropout: float = 0.0, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.box = nn.Linear(8, 4)
        self.cls = nn.Linear(8, num_classes)
        self.loss_scale = loss_scale

    def forward(self, images, targets=None):
        feats = torch.stack([self.features(img[None]).mean(dim=(2, 3))[0] for img in images])  # (N, 8)
        feats = self.dropout(feats)
        if targets is None:
            return [{"boxes": b[None], "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)}
                    for b in self.box(feats)]
        box_t = torch.stack([t["boxes"].mean(dim=0) for t in targets]) / 64.0
        cls_t = torch.stack([t["labels"][0] for t in targets])
        return {
            "loss_box": self.loss_scale * nn.functional.smooth_l1_loss(self.box(feats), box_t),
            "loss_cls": self.loss_scale * nn.functional.cross_entropy(self.cls(feats), cls_t),
        }


class TinyShapes(Dataset):
    """``n`` 32x32 images with one bright square each; random noise and flips from torch's global RNG
    (the augmentation contract of ``blendmask.data.build_train_loader``)."""

    def __init__(self, n: int = 12, size: int = 32):
        gen = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n):
            image = torch.rand(3, size, size, generator=gen) * 0.2
            x0, y0 = (torch.randint(0, size // 2, (2,), generator=gen)).tolist()
            label = i % 3
            image[label, y0:y0 + size // 3, x0:x0 + size // 3] = 1.0
            box = torch.tensor([[x0, y0, x0 + size // 3, y0 + size // 3]], dtype=torch.float32)
            self.items.append((image, {"boxes": box, "labels": torch.tensor([label])}))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image, target = self.items[index]
        image = image + 0.1 * torch.rand(())
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
            w = image.shape[-1]
            boxes = target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor([w, 0.0, w, 0])
            target = {**target, "boxes": boxes}
        return image, target


def tiny_cfg(**solver):
    """A BlendMaskConfig whose solver section is sized for the stand-ins (no lr decay unless ``steps`` says)."""
    from blendmask.config import BlendMaskConfig

    cfg = BlendMaskConfig()
    defaults = dict(ims_per_batch=4, base_lr=0.3, warmup_iters=3, warmup_factor=0.1, steps=(), gamma=0.1,
                    max_iter=20, checkpoint_period=0, eval_period=0, clip_grad_norm=0.0, amp=False)
    defaults.update(solver)
    for key, value in defaults.items():
        setattr(cfg.solver, key, value)
    return cfg
