"""The crude tumour baseline the lesion models must beat, kept out of the product.

On z-scored images (the BraTS cases come z-scored inside the brain: use them as they are;
other images go through ``zscore_in_mask`` first), FLAIR z > 2 inside the brain mask (its
largest connected component) is the whole tumour, contrast-T1 z > 2.5 inside it is enhancing
tumour, and the holes that the enhancing tumour encloses (filled in 3D) are the rest of the
core. Labels: 1 core that does not
enhance, 2 edema, 4 enhancing (BraTS).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def zscore_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = image[mask]
    return (image - values.mean()) / max(float(values.std()), 1e-6)


def largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == (int(np.argmax(sizes)) + 1)


def threshold_baseline(flair_z: np.ndarray, t1ce_z: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """BraTS labels from z-scored FLAIR and contrast T1 (see the module docstring)."""
    brain = brain.astype(bool)
    whole = largest_component((flair_z > 2) & brain)
    enhancing = (t1ce_z > 2.5) & whole
    core = ndimage.binary_fill_holes(enhancing) & whole
    labels = np.zeros(flair_z.shape, dtype=np.uint8)
    labels[whole] = 2
    labels[core] = 1
    labels[enhancing] = 4
    return labels
