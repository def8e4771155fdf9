"""The standard-space template: the ICBM152 2009a symmetric brain that nilearn installs.

nilearn ships it with the package (no download), skull-stripped at 1 mm, with grey- and
white-matter probability maps. In TemplateFlow's vocabulary that is ``MNI152NLin2009aSym``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEMPLATE_NAME = "MNI152NLin2009aSym"


@dataclass(frozen=True)
class TemplateFiles:
    """Paths of the template images on disk."""

    t1w: Path
    brain_mask: Path
    gm: Path
    wm: Path
    csf: Path


def write_template_files(folder: str | Path) -> TemplateFiles:
    """Write the template T1w, brain mask and GM/WM/CSF maps as NIfTI files in ``folder``.

    Files already there are reused, so every node of a run shares one copy.
    """
    import nibabel as nb
    from nilearn import datasets

    from bids_dl.derivatives import write_nifti_atomic

    folder = Path(folder)
    files = TemplateFiles(
        *(folder / f"tpl-{TEMPLATE_NAME}_res-1_{name}.nii.gz"
          for name in ("T1w", "desc-brain_mask", "label-GM_probseg", "label-WM_probseg",
                       "label-CSF_probseg"))
    )  # fmt: skip
    if all(path.exists() for path in files.__dict__.values()):
        return files
    t1w = datasets.load_mni152_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    brain = mask.get_fdata(dtype=np.float32) > 0
    gm = datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    csf = np.clip(1.0 - gm - wm, 0, 1) * brain
    affine = t1w.affine
    images = (
        t1w.get_fdata(dtype=np.float32),
        brain.astype(np.uint8),
        gm * brain,
        wm * brain,
        csf,
    )
    for path, data in zip(files.__dict__.values(), images, strict=True):
        write_nifti_atomic(nb.Nifti1Image(data, affine), path)
    return files


#: voxel size (mm) of the template grid BOLD runs are resampled onto (``res-2``, as fMRIPrep's
#: default output space): the 1 mm grid would make a run ~8 times larger for no real detail
BOLD_TEMPLATE_RESOLUTION = 2


@dataclass(frozen=True)
class TemplateGrid:
    """The template and its brain mask on a coarser grid."""

    t1w: Path
    brain_mask: Path


def write_template_grid(
    folder: str | Path, resolution: int = BOLD_TEMPLATE_RESOLUTION
) -> TemplateGrid:
    """Write the template T1w and brain mask resampled by nilearn to ``resolution`` mm (files
    already there are reused)."""
    import nibabel as nb
    from nilearn import datasets

    from bids_dl.derivatives import write_nifti_atomic

    folder = Path(folder)
    grid = TemplateGrid(
        folder / f"tpl-{TEMPLATE_NAME}_res-{resolution}_T1w.nii.gz",
        folder / f"tpl-{TEMPLATE_NAME}_res-{resolution}_desc-brain_mask.nii.gz",
    )
    if grid.t1w.exists() and grid.brain_mask.exists():
        return grid
    t1w = datasets.load_mni152_template(resolution=resolution)
    mask = datasets.load_mni152_brain_mask(resolution=resolution)
    write_nifti_atomic(nb.Nifti1Image(t1w.get_fdata(dtype=np.float32), t1w.affine), grid.t1w)
    brain = (mask.get_fdata(dtype=np.float32) > 0).astype(np.uint8)
    write_nifti_atomic(nb.Nifti1Image(brain, mask.affine), grid.brain_mask)
    return grid
