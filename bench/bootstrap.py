"""The bootstrap interval that the benchmarks share."""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 2000


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean."""
    draws = rng.choice(values, size=(BOOTSTRAP_SAMPLES, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))
