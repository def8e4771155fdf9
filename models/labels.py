"""Label sets of the shipped tasks and the tissue intensities of the fixed test contrasts.

Label values are FreeSurfer's (``aseg``), as in the SynthSeg label maps: the segmentation
writes them unchanged, so its ``dseg`` reads like a SynthSeg or FreeSurfer ``aseg``.
"""

from __future__ import annotations

import numpy as np

#: Label values of the brain, CSF included: the brain-mask task's foreground (extra-cerebral
#: tissues in the SynthSeg label maps are numbered from 100 up).
BRAIN_LABEL_RANGE = (1, 99)

#: The SynthSeg 2.0 structures: value -> (FreeSurfer name, tissue class used for the GM/WM/CSF
#: probseg, abbreviation, colour of FreeSurferColorLUT).
STRUCTURES: dict[int, tuple[str, str, str, str]] = {
    2: ("Left-Cerebral-White-Matter", "WM", "L-CWM", "#f5f5f5"),
    3: ("Left-Cerebral-Cortex", "GM", "L-Ctx", "#cd3e4e"),
    4: ("Left-Lateral-Ventricle", "CSF", "L-LV", "#781286"),
    5: ("Left-Inf-Lat-Vent", "CSF", "L-ILV", "#c43afa"),
    7: ("Left-Cerebellum-White-Matter", "WM", "L-CbWM", "#dcf8a4"),
    8: ("Left-Cerebellum-Cortex", "GM", "L-CbCtx", "#e69422"),
    10: ("Left-Thalamus", "GM", "L-Tha", "#00760e"),
    11: ("Left-Caudate", "GM", "L-Cau", "#7abadc"),
    12: ("Left-Putamen", "GM", "L-Put", "#ec0db0"),
    13: ("Left-Pallidum", "GM", "L-Pal", "#0c30ff"),
    14: ("3rd-Ventricle", "CSF", "3V", "#ccb68e"),
    15: ("4th-Ventricle", "CSF", "4V", "#2acca4"),
    16: ("Brain-Stem", "WM", "BS", "#779fb0"),
    17: ("Left-Hippocampus", "GM", "L-Hip", "#dcd814"),
    18: ("Left-Amygdala", "GM", "L-Amy", "#67ffff"),
    24: ("CSF", "CSF", "CSF", "#3c3c3c"),
    26: ("Left-Accumbens-area", "GM", "L-Acc", "#ffa500"),
    28: ("Left-VentralDC", "WM", "L-vDC", "#a52a2a"),
    41: ("Right-Cerebral-White-Matter", "WM", "R-CWM", "#f5f5f5"),
    42: ("Right-Cerebral-Cortex", "GM", "R-Ctx", "#cd3e4e"),
    43: ("Right-Lateral-Ventricle", "CSF", "R-LV", "#781286"),
    44: ("Right-Inf-Lat-Vent", "CSF", "R-ILV", "#c43afa"),
    46: ("Right-Cerebellum-White-Matter", "WM", "R-CbWM", "#dcf8a4"),
    47: ("Right-Cerebellum-Cortex", "GM", "R-CbCtx", "#e69422"),
    49: ("Right-Thalamus", "GM", "R-Tha", "#00760e"),
    50: ("Right-Caudate", "GM", "R-Cau", "#7abadc"),
    51: ("Right-Putamen", "GM", "R-Put", "#ec0db0"),
    52: ("Right-Pallidum", "GM", "R-Pal", "#0d30ff"),
    53: ("Right-Hippocampus", "GM", "R-Hip", "#dcd814"),
    54: ("Right-Amygdala", "GM", "R-Amy", "#67ffff"),
    58: ("Right-Accumbens-area", "GM", "R-Acc", "#ffa500"),
    60: ("Right-VentralDC", "WM", "R-vDC", "#a52a2a"),
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
#: Contrast-enhanced T1w: healthy brain tissue as in T1w (enhancement is a lesion's property).
CONTRAST_TISSUE_MEANS["T1ce"] = CONTRAST_TISSUE_MEANS["T1w"]

#: Label values the lesion simulator plants into label maps (inside the brain range, unused by
#: the SynthSeg label maps).
LESION_VALUES = {
    "necrosis": 94,
    "non_enhancing": 95,
    "edema": 96,
    "enhancing": 97,
    "wmh": 98,
    "faint_edema": 93,
    "cystic_necrosis": 92,
}

#: Tumour labels written in ``desc-tumor_dseg`` (BraTS convention, BraTS 2013's label 3
#: "non-enhancing tumour" merged into 1) and the lesion values each one gathers.
TUMOR_LABELS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("necrotic and non-enhancing tumour core", ("necrosis", "non_enhancing", "cystic_necrosis")),
    2: ("peritumoural edema", ("edema", "faint_edema")),
    4: ("enhancing tumour", ("enhancing",)),
}

#: The BraTS evaluation regions as sets of tumour labels.
TUMOR_REGIONS: dict[str, tuple[int, ...]] = {
    "whole_tumor": (1, 2, 4),
    "tumor_core": (1, 4),
    "enhancing_tumor": (4,),
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


def tissue_groups() -> dict[str, list[int]]:
    """Label values of each tissue class: the probabilities summed into GM/WM/CSF maps."""
    return {
        tissue: [value for value, row in STRUCTURES.items() if row[1] == tissue]
        for tissue in TISSUE_CLASSES
    }


def volume_column(value: int) -> str:
    """Column of a structure's volume in the measures table: ``left_hippocampus_mm3``.

    FreeSurfer's "CSF" (24: all CSF outside the ventricles) becomes ``extraventricular_csf_mm3``
    so it cannot be mistaken for the CSF tissue total (``csf_mm3``).
    """
    if value == 24:
        return "extraventricular_csf_mm3"
    return STRUCTURES[value][0].lower().replace("-", "_") + "_mm3"


def tissue_lookup() -> np.ndarray:
    """Label value -> tissue label (0 none, 1 GM, 2 WM, 3 CSF, the order of ``dseg.tsv``)."""
    lookup = np.zeros(256, dtype=np.uint8)
    for value, row in STRUCTURES.items():
        lookup[value] = TISSUE_CLASSES.index(row[1]) + 1
    return lookup
