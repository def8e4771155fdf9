"""Samplers: endless streams of (image, target) training pairs, each from one explicit
``torch.Generator``, and their mixture."""

from __future__ import annotations

import torch


class Sampler:
    """Draws (image, target) training pairs from one ``torch.Generator`` (``self.generator``)."""

    generator: torch.Generator

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``(image, target)`` pair."""
        raise NotImplementedError

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` samples, stacked."""
        images, targets = zip(*(self.sample() for _ in range(size)), strict=True)
        return torch.stack(images), torch.stack(targets)


class MixedSampler(Sampler):
    """Draws each sample from one of ``samplers``, chosen with probabilities ``weights``.

    The samplers then share this sampler's generator, so one generator state (what a
    checkpoint keeps) fixes the whole stream.
    """

    def __init__(self, samplers: list[Sampler], weights: list[float], seed: int = 0) -> None:
        if len(samplers) != len(weights) or not samplers or min(weights) < 0 or not sum(weights):
            raise ValueError("one non-negative weight per sampler, not all zero, is needed")
        self.samplers = samplers
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(seed)
        for sampler in samplers:
            sampler.generator = self.generator

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample of a sampler drawn by weight; ``last_source`` says which."""
        self.last_source = int(torch.multinomial(self.weights, 1, generator=self.generator))
        return self.samplers[self.last_source].sample()

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` samples, stacked; ``batch_sources`` then holds each one's sampler index
        (so that the loss can treat real and simulated samples differently)."""
        images, targets, self.batch_sources = [], [], []
        for _ in range(size):
            image, target = self.sample()
            images.append(image)
            targets.append(target)
            self.batch_sources.append(self.last_source)
        return torch.stack(images), torch.stack(targets)
