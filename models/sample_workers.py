"""Training batches drawn in worker processes, so that synthesis keeps a GPU busy.

A structures sample takes ~0.13 s to synthesise on one core and a GPU training step a few
milliseconds, so a GPU trained from in-process synthesis waits on the CPU. Each worker holds
its own copy of the sampler, re-seeded from ``(seed..., worker)``: the stream of batches is
reproducible for a given seed and number of workers, not across worker counts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bids_dl.models.samplers import Sampler

Batch = tuple[torch.Tensor, torch.Tensor, list[int]]


def stream_seed(*keys: int) -> int:
    """One 63-bit seed from several integers (e.g. config seed, resumed iteration, worker)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


class _SampleStream(IterableDataset):
    """Endless ``(image, target, source)`` samples; ``source`` is the index of the sampler a
    ``MixedSampler`` drew from (0 for a single source)."""

    def __init__(self, sampler: Sampler, seed: tuple[int, ...]) -> None:
        self.sampler = sampler
        self.seed = seed

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        torch.set_num_threads(1)  # one core per worker; the workers are the parallelism
        self.sampler.generator.manual_seed(stream_seed(*self.seed, worker))
        while True:
            image, target = self.sampler.sample()
            yield image, target, getattr(self.sampler, "last_source", 0)


def worker_batches(
    sampler: Sampler, batch_size: int, workers: int, seed: tuple[int, ...], pin_memory: bool
) -> Iterator[Batch]:
    """Batches from ``workers`` processes, taken from the workers in turn."""
    loader = DataLoader(
        _SampleStream(sampler, seed),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4,
        persistent_workers=True,
    )
    for images, targets, sources in loader:
        yield images, targets, sources.tolist()


def inline_batches(sampler: Sampler, batch_size: int) -> Iterator[Batch]:
    """Batches drawn in this process from the sampler's own generator (what a checkpoint
    saves, so that a resumed run continues the same stream)."""
    while True:
        images, targets = sampler.batch(batch_size)
        yield images, targets, list(getattr(sampler, "batch_sources", [0] * batch_size))
