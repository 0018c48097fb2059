"""Repeat-factor sampling for long-tailed data (LVIS's rule, detectron2's ``RepeatFactorTrainingSampler``).

For each category ``c`` let ``f(c)`` be the fraction of training images holding an instance of
``c``. Its repeat factor is ``r(c) = max(1, sqrt(t / f(c)))`` for the threshold ``t``; an image
repeats by the largest factor of its categories (its rarest category), 1 without instances. Each
epoch rounds every image's factor stochastically (``floor(r) + 1`` with probability
``r - floor(r)``), so an image appears ``r`` times per epoch on average.

Data order (the contract of :mod:`blendmask.data.loader`, with epochs of varying length): epoch
``e`` is the seeded permutation of the indices repeated by that epoch's rounding, both functions
of ``(seed, e)`` only; the global stream concatenates the epochs; rank ``r`` of ``W`` takes
positions ``r, r + W, ...``; every sample's seed is a function of ``(seed, global position)``.
Resuming at sample ``k`` of a rank walks the epoch lengths up to there (O(dataset size) per epoch
skipped) and yields exactly what the uninterrupted run would have.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Sampler

from .seeds import derive_seed

__all__ = ["repeat_factors", "RepeatFactorTrainingSampler"]


def repeat_factors(image_categories: Sequence[Sequence[int]], threshold: float) -> np.ndarray:
    """``(N,)`` float64 repeat factor of each image, from the categories of its instances."""
    if not threshold > 0 or not math.isfinite(threshold):
        raise ValueError(f"repeat_factors: threshold must be a positive number, got {threshold!r}")
    n = len(image_categories)
    if n == 0:
        return np.zeros(0)
    unique = [np.unique(np.asarray(cats, dtype=np.int64)) for cats in image_categories]
    counts = np.fromiter(map(len, unique), dtype=np.int64, count=n)
    flat = np.concatenate(unique) if counts.sum() else np.zeros(0, np.int64)
    categories, images_with = np.unique(flat, return_counts=True)
    category_factor = np.maximum(1.0, np.sqrt(threshold / (images_with / n)))
    per_instance = category_factor[np.searchsorted(categories, flat)]
    factors = np.ones(n)
    owners = np.repeat(np.arange(n), counts)
    np.maximum.at(factors, owners, per_instance)
    return factors


class RepeatFactorTrainingSampler(Sampler[Tuple[int, int]]):
    """Infinite stream of ``(dataset index, sample seed)`` with repeat-factor sampling (module doc),
    a drop-in for :class:`blendmask.data.loader.TrainingSampler`.

    Args:
        factors: ``(N,)`` repeat factor of each dataset index (:func:`repeat_factors`), all >= 1.
        seed, rank, world_size, start: as for ``TrainingSampler``.
    """

    def __init__(self, factors: np.ndarray, *, seed: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        factors = np.asarray(factors, dtype=np.float64)
        if factors.ndim != 1 or factors.size == 0:
            raise ValueError("RepeatFactorTrainingSampler: factors must be a non-empty 1-D array (empty dataset?)")
        if not (np.isfinite(factors).all() and (factors >= 1).all()):
            raise ValueError("RepeatFactorTrainingSampler: every factor must be a finite number >= 1")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"RepeatFactorTrainingSampler: need 0 <= rank < world_size, got rank={rank} "
                             f"world_size={world_size}")
        if start < 0:
            raise ValueError(f"RepeatFactorTrainingSampler: start must be >= 0, got {start}")
        self.factors, self.seed = factors, int(seed)
        self.rank, self.world_size, self.start = int(rank), int(world_size), int(start)
        self._whole, self._fraction = np.floor(factors), factors - np.floor(factors)

    def epoch_counts(self, epoch: int) -> np.ndarray:
        """``(N,)`` int64: how many times each index appears in ``epoch`` (stochastic rounding)."""
        rng = np.random.default_rng(derive_seed(self.seed, "repeat", epoch))
        return (self._whole + (rng.random(self.factors.size) < self._fraction)).astype(np.int64)

    def epoch_order(self, epoch: int) -> List[int]:
        """The global order of the dataset indices in ``epoch``."""
        indices = torch.from_numpy(np.repeat(np.arange(self.factors.size), self.epoch_counts(epoch)))
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
        return indices[torch.randperm(len(indices), generator=generator)].tolist()

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        position = self.start * self.world_size + self.rank
        epoch, epoch_start = 0, 0
        length = int(self.epoch_counts(0).sum())
        while position >= epoch_start + length:  # skip whole epochs by their lengths only
            epoch_start += length
            epoch += 1
            length = int(self.epoch_counts(epoch).sum())
        order = self.epoch_order(epoch)
        for _ in itertools.count():
            while position >= epoch_start + len(order):
                epoch_start += len(order)
                epoch += 1
                order = self.epoch_order(epoch)
            yield order[position - epoch_start], derive_seed(self.seed, "sample", position)
            position += self.world_size
