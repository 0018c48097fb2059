"""Deterministic, resumable, rank-sharded training order.

The order of training samples is a pure function of ``(seed, position)``: the global stream is
the concatenation of seeded permutations of the data set (one per epoch), and batch ``i`` of
rank ``r`` is a fixed slice of it. Each sample also gets its own augmentation seed derived from
its position in the stream. A run resumed at iteration ``i`` therefore sees exactly the images,
and the same random flips/resizes, that an uninterrupted run would have seen.
"""
from __future__ import annotations

import random
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["TrainingBatchSampler", "SeededDataset", "collate_image_target"]

SampleKey = Tuple[int, int]  # (dataset index, augmentation seed)


class TrainingBatchSampler(Sampler[List[SampleKey]]):
    """Infinite batches of ``(index, augmentation_seed)`` for one rank.

    Args:
        dataset_size: number of samples in the data set.
        batch_size: images per batch on this rank.
        seed: seed of the order (the same on every rank).
        rank, world_size: this process's shard; rank ``r`` takes global batch ``i``'s
            positions ``[i * B * W + r * B, i * B * W + (r + 1) * B)``.
        start_iter: first batch to produce (resume point).
    """

    def __init__(self, dataset_size: int, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_iter: int = 0):
        if dataset_size <= 0:
            raise ValueError("the training set is empty")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_iter = start_iter

    def _permutation(self, epoch: int) -> List[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=generator).tolist()

    def _key_at(self, position: int, cache: dict) -> SampleKey:
        epoch, offset = divmod(position, self.dataset_size)
        if cache.get("epoch") != epoch:
            cache["epoch"], cache["perm"] = epoch, self._permutation(epoch)
        augmentation_seed = (self.seed * 1_000_003 + position) % (2**31)
        return cache["perm"][offset], augmentation_seed

    def __iter__(self) -> Iterator[List[SampleKey]]:
        cache: dict = {}
        iteration = self.start_iter
        global_batch = self.batch_size * self.world_size
        while True:
            first = iteration * global_batch + self.rank * self.batch_size
            yield [self._key_at(first + j, cache) for j in range(self.batch_size)]
            iteration += 1


class SeededDataset(Dataset):
    """Wraps a map-style data set so that ``dataset[(index, seed)]`` runs ``dataset[index]`` with
    the torch, numpy and python global RNGs seeded by ``seed``; the caller's RNG states are restored
    afterwards. This makes random augmentations a function of the sample's position in the stream,
    independent of the number of data-loader workers."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey):
        index, seed = key
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                np.random.seed(seed)
                random.seed(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def collate_image_target(batch: Sequence[Tuple[torch.Tensor, dict]]):
    """``[(image, target), ...]`` -> ``(list[image], list[target])``."""
    images, targets = zip(*batch)
    return list(images), list(targets)
