"""Label post-processing a card asks for: nested-region decoding (BraTS), and keeping or
dropping connected components."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from bids_dl.models.card import ModelCard
from bids_dl.models.metrics import connected_lesions


def decode_nested_regions(
    probabilities: np.ndarray,
    regions: list[list[int]],
    thresholds: Sequence[float] | None = None,
) -> np.ndarray:
    """Class index per voxel from nested regions (outer to inner, class positions), as
    region-based BraTS models decode: a voxel belongs to a region when the summed probability of
    its classes exceeds its threshold (0.5 unless ``thresholds`` gives one per region) and it
    lies in the enclosing region; it takes the most probable
    class of its innermost region that no inner region holds (the inner region's classes when
    none is left, e.g. enhancing tumour).

    The whole tumour is then everything that is more likely tumour than not, where the argmax
    over classes leaves out voxels whose tumour probability is split between classes.
    """
    index = np.zeros(probabilities.shape[1:], dtype=np.int16)
    inside = np.ones(probabilities.shape[1:], dtype=bool)
    thresholds = [0.5] * len(regions) if thresholds is None else thresholds
    for position, (region, threshold) in enumerate(zip(regions, thresholds, strict=True)):
        inside &= probabilities[region].sum(0) > threshold
        inner = set(regions[position + 1]) if position + 1 < len(regions) else set()
        own = [c for c in region if c not in inner] or region
        index[inside] = np.asarray(own, dtype=np.int16)[probabilities[own][:, inside].argmax(0)]
    return index


def keep_largest_component(labels: np.ndarray, **_) -> np.ndarray:
    """Labels with every foreground voxel outside the largest 26-connected component cleared."""
    components, count = connected_lesions(labels)
    if count < 2:
        return labels
    largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
    return np.where(components == largest, labels, 0).astype(labels.dtype)


#: Components smaller than this cannot win ``keep_most_confident_component`` (unless all are).
CONFIDENT_COMPONENT_MIN_MM3 = 1000.0


def keep_most_confident_component(
    labels: np.ndarray, foreground_probability: np.ndarray | None = None, voxel_mm3: float = 1.0
) -> np.ndarray:
    """Labels of the 26-connected component with the highest mean foreground probability.

    False tumour (on enhancing vessels, the posterior fossa, CSF) comes as separate components
    that can outgrow a small tumour but are less certain; components under
    ``CONFIDENT_COMPONENT_MIN_MM3`` only count when nothing larger is found, so a few confident
    voxels cannot win.
    """
    if foreground_probability is None:
        raise ValueError("the most-confident-component step needs the model's probabilities")
    components, count = connected_lesions(labels)
    if count < 2:
        return labels
    index = np.arange(1, count + 1)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    confidence = ndimage.mean(foreground_probability, components, index)
    eligible = sizes * voxel_mm3 >= CONFIDENT_COMPONENT_MIN_MM3
    if not eligible.any():
        eligible[:] = True
    chosen = index[eligible][int(np.argmax(np.asarray(confidence)[eligible]))]
    return np.where(components == chosen, labels, 0).astype(labels.dtype)


def remove_small_components(labels: np.ndarray, min_voxels: float) -> np.ndarray:
    """Labels with every 26-connected foreground component under ``min_voxels`` cleared."""
    components, _ = connected_lesions(labels)
    small = np.bincount(components.ravel()) < min_voxels
    small[0] = False
    return np.where(small[components], 0, labels).astype(labels.dtype)


#: Label post-processing a card may ask for (``inputs.postprocessing``).
POSTPROCESSING = {
    "largest_component": keep_largest_component,
    "most_confident_component": keep_most_confident_component,
}


def postprocess(
    labels: np.ndarray,
    card: ModelCard,
    voxel_mm3: float = 1.0,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Apply the card's post-processing: a named step (``inputs.postprocessing``) and the
    removal of lesions under ``inputs.min_lesion_mm3`` (``voxel_mm3``: one voxel's volume).
    ``probabilities`` (``segment``'s, background first) feed the steps that weigh confidence."""
    name = card.inputs.get("postprocessing")
    if name:
        if name not in POSTPROCESSING:
            raise ValueError(f"{card.name}: unknown post-processing {name!r}")
        foreground = None if probabilities is None else 1 - probabilities[0]
        labels = POSTPROCESSING[name](
            labels, foreground_probability=foreground, voxel_mm3=voxel_mm3
        )
    min_lesion_mm3 = float(card.inputs.get("min_lesion_mm3") or 0)
    if min_lesion_mm3 > 0:
        labels = remove_small_components(labels, min_lesion_mm3 / voxel_mm3)
    return labels
