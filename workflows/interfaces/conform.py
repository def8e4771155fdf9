"""Conform an anatomical image: one 3D volume, RAS+ voxel order, finite values.

The voxel grid is kept (only axes are flipped or swapped, no interpolation), so outputs stay
on the subject's native grid, as fMRIPrep's ``T1w`` space does.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits

from bids_dl.images import load_3d_image, save_image, zero_non_finite


def conform_image(in_file: str | Path, out_file: str | Path) -> dict[str, object]:
    """Reorient ``in_file`` to RAS+ as float32, replace non-finite values by 0, save it.

    Returns what was done, for the report.
    """
    image = load_3d_image(in_file)
    original_orientation = "".join(nb.aff2axcodes(image.affine))
    canonical = nb.as_closest_canonical(image)
    data = canonical.get_fdata(dtype=np.float32)
    non_finite = zero_non_finite(data, in_file)
    save_image(data, canonical.affine, out_file)
    return {
        "original_orientation": original_orientation,
        "shape": list(data.shape),
        "voxel_size_mm": [round(float(z), 4) for z in canonical.header.get_zooms()[:3]],
        "non_finite_voxels": non_finite,
    }


class _ConformInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="anatomical image")


class _ConformOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="RAS+ float32 image on the native grid")
    summary = traits.Dict(desc="original orientation, shape, voxel size, non-finite voxels")


class Conform(SimpleInterface):
    """Reorient to RAS+ without resampling and clean non-finite values."""

    input_spec = _ConformInputSpec
    output_spec = _ConformOutputSpec

    def _run_interface(self, runtime):
        out_file = Path(runtime.cwd) / "conformed.nii.gz"
        self._results["summary"] = conform_image(self.inputs.in_file, out_file)
        self._results["out_file"] = str(out_file)
        return runtime
