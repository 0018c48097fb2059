"""Batching and sampling: an iteration-based, resumable training loader and a test loader.

Training data order (documented contract for resuming):

- One infinite **global stream** of dataset indices is the concatenation of per-epoch
  permutations; the permutation of epoch ``e`` is a function of ``(seed, e)`` only.
- With ``W`` processes (``torch.distributed`` initialised), rank ``r`` takes the global positions
  ``r, r + W, r + 2W, ...`` (DistributedSampler semantics over an infinite stream).
- Every sample gets its own seed, a function of ``(seed, global position)``; the loader seeds
  the torch, numpy and python global RNGs with it (restoring them afterwards) before loading and
  augmenting the sample. Augmentation is therefore independent of worker count, prefetching and restarts.
- Resuming at iteration ``i`` with per-process batch size ``B`` is
  ``build_train_loader(..., start_iter=i)``: the sampler jumps straight to position ``i * B`` of
  this rank's stream (cost O(dataset size), not O(i)), and yields exactly the batches the
  uninterrupted run would have yielded from iteration ``i`` on.

Feeding a GPU: ``num_workers=None`` picks :func:`default_num_workers`; workers are persistent;
``pin_memory`` pins the batches for non-blocking copies (:func:`batch_to_device`), which also turns
uint8 images (``CocoInstanceDataset(uint8_images=True)``) into float32 on the device.

Worker memory: each worker starts by moving the objects it inherited from the forking process
out of the garbage collector's reach (:func:`freeze_inherited_objects`), so that its collections
never write to them and their pages stay shared.
"""
from __future__ import annotations

import gc
import itertools
import os
import random
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..distributed import dist_rank_and_world_size
from .images import uint8_to_unit_float
from .repeat_factor import RepeatFactorTrainingSampler, repeat_factors
from .seeds import derive_seed

__all__ = [
    "collate",
    "freeze_inherited_objects",
    "TrainingSampler",
    "InferenceSampler",
    "build_train_loader",
    "build_test_loader",
    "default_num_workers",
    "batch_to_device",
    "MAX_AUTO_WORKERS",
    "SAMPLERS",
    "derive_seed",
]

#: ``sampler`` values of :func:`build_train_loader` (``dataloader.sampler`` of the config).
SAMPLERS = ("training", "repeat_factor")

#: The most loader workers :func:`default_num_workers` picks per process.
MAX_AUTO_WORKERS = 4


def default_num_workers(device: Optional[torch.device] = None) -> int:
    """Loader workers per process when none are asked for: ``min(4, CPU cores per local rank)``
    when training on a GPU (``LOCAL_WORLD_SIZE`` from torchrun, else 1), so that image decoding
    overlaps the device's work; 0 on the CPU, where workers would compete with the training
    threads for the same cores."""
    if device is None or torch.device(device).type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(MAX_AUTO_WORKERS, cores // local_ranks))


def batch_to_device(images: Sequence[torch.Tensor], targets: Sequence[Dict[str, Any]],
                    device: torch.device) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
    """A batch on ``device`` with non-blocking copies; uint8 images become float32 in ``[0, 1]``
    there (:func:`blendmask.data.images.uint8_to_unit_float`)."""
    images = [uint8_to_unit_float(image.to(device, non_blocking=True)) for image in images]
    targets = [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
    """``[(image, target), ...] -> ([image, ...], [target, ...])``; images keep their own sizes."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


class TrainingSampler(Sampler[Tuple[int, int]]):
    """Infinite stream of ``(dataset index, sample seed)`` for one rank (see the module doc).

    Args:
        size: dataset length (> 0).
        seed: base seed of the order and of the per-sample seeds.
        rank, world_size: this process's place in the global stream.
        start: number of samples this rank has already consumed (fast-forward).
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler: size must be positive, got {size} (empty dataset?)")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"TrainingSampler: need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if start < 0:
            raise ValueError(f"TrainingSampler: start must be >= 0, got {start}")
        self.size, self.seed = int(size), int(seed)
        self.rank, self.world_size, self.start = int(rank), int(world_size), int(start)

    def epoch_order(self, epoch: int) -> List[int]:
        """The global order of the dataset indices in ``epoch`` (a seeded permutation)."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch, order = -1, []
        for k in itertools.count(self.start):
            position = k * self.world_size + self.rank
            if position // self.size != epoch:
                epoch = position // self.size
                order = self.epoch_order(epoch)
            yield order[position % self.size], derive_seed(self.seed, "sample", position)


class InferenceSampler(Sampler[int]):
    """Indices ``rank, rank + W, ...`` of a dataset: every image exactly once over all ranks."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"InferenceSampler: need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.indices = range(rank, int(size), world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _SeededSamples(Dataset):
    """Loads ``dataset[index]`` with the torch, numpy and python global RNGs seeded by the sample
    seed (so user transforms built on any of them are reproducible); restores them afterwards."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Tuple[int, int]):
        index, sample_seed = key
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(sample_seed)
                np.random.seed(sample_seed % 2**32)
                random.seed(sample_seed)
                return self.dataset[index]
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def freeze_inherited_objects(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: ``gc.freeze()`` the objects inherited from the forking
    process. Otherwise the worker's first full collection writes to the header of every one of
    them, so the kernel copies every page that holds one (measured: ~80 MB per worker during an
    epoch of COCO train). The forking process's collector is not affected."""
    gc.freeze()


def build_train_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: Optional[int],
    seed: int,
    distributed: Optional[bool] = None,
    start_iter: int = 0,
    device: Optional[torch.device] = None,
    sampler: str = "training",
    repeat_threshold: float = 0.0,
) -> DataLoader:
    """An infinite training loader of ``(list[image], list[target])`` batches.

    ``batch_size`` is per process. ``num_workers``: worker processes (persistent), None for
    :func:`default_num_workers` of ``device`` (the training device; on CUDA the batches are
    pinned for :func:`batch_to_device`). ``sampler``: ``"training"`` (every image once per epoch)
    or ``"repeat_factor"`` (:mod:`blendmask.data.repeat_factor` with ``repeat_threshold``; the
    dataset must give ``image_categories()``, as :class:`~blendmask.data.CocoInstanceDataset` does). Iterate it with ``it = iter(loader)`` and ``next(it)`` once per
    iteration; it never ends. ``start_iter`` resumes the exact data order of an uninterrupted run
    (module doc). ``distributed``: see :func:`blendmask.distributed.dist_rank_and_world_size`. The loader leaves the
    global RNG states of the calling process unchanged.
    """
    if batch_size <= 0:
        raise ValueError(f"build_train_loader: batch_size must be positive, got {batch_size}")
    if num_workers is None:
        num_workers = default_num_workers(device)
    if num_workers < 0:
        raise ValueError(f"build_train_loader: num_workers must be >= 0, got {num_workers}")
    if start_iter < 0:
        raise ValueError(f"build_train_loader: start_iter must be >= 0, got {start_iter}")
    if sampler not in SAMPLERS:
        raise ValueError(f"build_train_loader: sampler must be one of {SAMPLERS}, got {sampler!r}")
    rank, world_size = dist_rank_and_world_size(distributed)
    place = dict(seed=seed, rank=rank, world_size=world_size, start=start_iter * batch_size)
    if sampler == "repeat_factor":

        if not hasattr(dataset, "image_categories"):
            raise ValueError(f"build_train_loader: sampler 'repeat_factor' needs a dataset with image_categories() "
                             f"(a CocoInstanceDataset), got {type(dataset).__name__}")
        order = RepeatFactorTrainingSampler(repeat_factors(dataset.image_categories(), repeat_threshold), **place)
    else:
        order = TrainingSampler(len(dataset), **place)
    return DataLoader(
        _SeededSamples(dataset),
        batch_size=batch_size,
        sampler=order,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device is not None and torch.device(device).type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=freeze_inherited_objects,
        # Workers' base seed comes from this generator, not from the global RNG.
        generator=torch.Generator().manual_seed(derive_seed(seed, "workers", rank)),
    )


def build_test_loader(
    dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0, distributed: Optional[bool] = None
) -> DataLoader:
    """A finite, ordered loader of ``(list[image], list[target])`` batches.

    With ``torch.distributed`` in use, rank ``r`` of ``W`` sees dataset indices ``r, r + W, ...``;
    :class:`blendmask.evaluation.COCOEvaluator` gathers the predictions of all ranks.
    """
    if batch_size <= 0:
        raise ValueError(f"build_test_loader: batch_size must be positive, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"build_test_loader: num_workers must be >= 0, got {num_workers}")
    rank, world_size = dist_rank_and_world_size(distributed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=InferenceSampler(len(dataset), rank=rank, world_size=world_size),
        num_workers=num_workers,
        collate_fn=collate,
        worker_init_fn=freeze_inherited_objects,
    )
