"""Label sets of the shipped tasks and the tissue intensities of the fixed test contrasts.

Label values are FreeSurfer's (``aseg``), as in the SynthSeg label maps: the segmentation
writes them unchanged, so its ``dseg`` reads like a SynthSeg or FreeSurfer ``aseg``.
"""

from __future__ import annotations

#: Label values of the brain, CSF included: the brain-mask task's foreground (extra-cerebral
#: tissues in the SynthSeg label maps are numbered from 100 up).
BRAIN_LABEL_RANGE = (1, 99)

#: The SynthSeg 2.0 structures: value -> (name, tissue class used for the GM/WM/CSF probseg).
STRUCTURES: dict[int, tuple[str, str]] = {
    2: ("Left-Cerebral-White-Matter", "WM"),
    3: ("Left-Cerebral-Cortex", "GM"),
    4: ("Left-Lateral-Ventricle", "CSF"),
    5: ("Left-Inf-Lat-Vent", "CSF"),
    7: ("Left-Cerebellum-White-Matter", "WM"),
    8: ("Left-Cerebellum-Cortex", "GM"),
    10: ("Left-Thalamus", "GM"),
    11: ("Left-Caudate", "GM"),
    12: ("Left-Putamen", "GM"),
    13: ("Left-Pallidum", "GM"),
    14: ("3rd-Ventricle", "CSF"),
    15: ("4th-Ventricle", "CSF"),
    16: ("Brain-Stem", "WM"),
    17: ("Left-Hippocampus", "GM"),
    18: ("Left-Amygdala", "GM"),
    24: ("CSF", "CSF"),
    26: ("Left-Accumbens-area", "GM"),
    28: ("Left-VentralDC", "WM"),
    41: ("Right-Cerebral-White-Matter", "WM"),
    42: ("Right-Cerebral-Cortex", "GM"),
    43: ("Right-Lateral-Ventricle", "CSF"),
    44: ("Right-Inf-Lat-Vent", "CSF"),
    46: ("Right-Cerebellum-White-Matter", "WM"),
    47: ("Right-Cerebellum-Cortex", "GM"),
    49: ("Right-Thalamus", "GM"),
    50: ("Right-Caudate", "GM"),
    51: ("Right-Putamen", "GM"),
    52: ("Right-Pallidum", "GM"),
    53: ("Right-Hippocampus", "GM"),
    54: ("Right-Amygdala", "GM"),
    58: ("Right-Accumbens-area", "GM"),
    60: ("Right-VentralDC", "WM"),
}

TISSUE_CLASSES = ("GM", "WM", "CSF")

#: Mean intensity (0-1) of each brain tissue in the fixed T1w-, T2w- and FLAIR-like contrasts:
#: typical relative intensities at 3 T (cortex, deep grey nuclei, white matter, CSF).
#: Keys: "WM", "GM", "deep" (subcortical grey), "pallidum", "CSF".
CONTRAST_TISSUE_MEANS: dict[str, dict[str, float]] = {
    "T1w": {"WM": 0.85, "GM": 0.55, "deep": 0.66, "pallidum": 0.75, "CSF": 0.15},
    "T2w": {"WM": 0.35, "GM": 0.55, "deep": 0.50, "pallidum": 0.38, "CSF": 0.95},
    "FLAIR": {"WM": 0.45, "GM": 0.65, "deep": 0.60, "pallidum": 0.50, "CSF": 0.06},
}

_DEEP_GREY = {10, 11, 12, 17, 18, 26, 49, 50, 51, 53, 54, 58, 28, 60}
_PALLIDUM = {13, 52}


def tissue_key(value: int) -> str | None:
    """The key into ``CONTRAST_TISSUE_MEANS`` of a brain label value (None outside the brain)."""
    if value in _PALLIDUM:
        return "pallidum"
    if value in _DEEP_GREY:
        return "deep"
    if value in STRUCTURES:
        return STRUCTURES[value][1]
    if BRAIN_LABEL_RANGE[0] <= value <= BRAIN_LABEL_RANGE[1]:
        return "GM"  # small labels outside the set (vessels, chiasm, lesions)
    return None
