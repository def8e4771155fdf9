"""PET quantification of a static image: SUVR against a reference region of the structure
labels, SUV from the dose and body weight, and regional mean SUVR for the measures table.

Functions work on files and return files.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, SimpleInterface, TraitedSpec, traits

from bids_dl.derivatives import PET_AGGREGATES, PET_MEASURE_REGIONS
from bids_dl.images import save_image
from bids_dl.workflows.interfaces.images import regional_means
from bids_dl.workflows.interfaces.pet_preproc import labels_on_grid

#: reference regions of SUVR: name -> FreeSurfer label values
REFERENCE_REGIONS = {"cerebellum-gm": (8, 47), "cerebellum": (7, 8, 46, 47), "brainstem": (16,)}
#: how sidecars name them
REFERENCE_NAMES = {
    "cerebellum-gm": "cerebellar grey matter (Left/Right-Cerebellum-Cortex, labels 8 and 47)",
    "cerebellum": "whole cerebellum (cerebellar cortex and white matter, labels 7, 8, 46, 47)",
    "brainstem": "brain stem (Brain-Stem, label 16)",
}


def uptake_ratio(static_file: str, aseg_file: str, reference: str, out_file: str) -> float:
    """SUVR: the static image over its mean in the ``reference`` region of
    :data:`REFERENCE_REGIONS` (voxels of the labels where the image is non-zero: a PET field
    of view short of the cerebellum leaves zeros there). Returns the reference mean.
    ValueError for an unknown reference, another grid, or an empty or non-positive
    reference."""
    if reference not in REFERENCE_REGIONS:
        raise ValueError(
            f"unknown reference region {reference!r} (known: {', '.join(REFERENCE_REGIONS)})"
        )
    image, aseg = nb.load(static_file), labels_on_grid(static_file, aseg_file)
    static = image.get_fdata(dtype=np.float32)
    values = REFERENCE_REGIONS[reference]
    region = np.isin(aseg, values) & (static != 0) & np.isfinite(static)
    if not region.any():
        raise ValueError(
            f"the reference region {reference} (labels {', '.join(map(str, values))}) holds no "
            f"voxel of {aseg_file} inside the PET image"
        )
    mean = float(static[region].mean())
    if mean <= 0:
        raise ValueError(
            f"the mean of {static_file} in the reference region {reference} is {mean:g}"
        )
    save_image((static / mean).astype(np.float32), image.affine, out_file)
    return mean


def standardized_uptake(static_file: str, factor: float, out_file: str) -> str:
    """SUV (g/mL): the static image times ``factor`` (``bids_dl.pet_inputs.suv_factor``)."""
    if not np.isfinite(factor) or factor <= 0:
        raise ValueError(f"the SUV factor {factor!r} is not a positive number")
    image = nb.load(static_file)
    suv = image.get_fdata(dtype=np.float32) * np.float32(factor)
    return str(save_image(suv, image.affine, out_file))


def pet_measures(suvr_file: str, aseg_file: str, prefix: str = "pet") -> dict[str, float | str]:
    """``<prefix>_suvr_mean_<region>`` for each region of ``PET_MEASURE_REGIONS`` (the
    structures, then cortex, cerebral WM and deep GM), where the SUVR is non-zero; n/a below
    10 voxels."""
    suvr = nb.load(suvr_file).get_fdata(dtype=np.float32)
    aseg = labels_on_grid(suvr_file, aseg_file)
    aggregate = np.zeros_like(aseg)
    for index, (values, _) in enumerate(PET_AGGREGATES.values(), 1):
        aggregate[np.isin(aseg, values)] = index
    labels = {"aseg": aseg, "aggregate": aggregate}
    inside = np.isfinite(suvr) & (suvr != 0)
    return regional_means({"suvr": suvr}, inside, labels, PET_MEASURE_REGIONS, prefix)


class _RatioInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="static PET image")
    aseg = File(exists=True, mandatory=True, desc="structure labels on its grid")
    reference = traits.Enum(*REFERENCE_REGIONS, mandatory=True, desc="reference region")


class _RatioOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="SUVR image")
    reference_mean = traits.Float(desc="mean of the static image in the reference region")


class UptakeRatio(SimpleInterface):
    """SUVR against a reference region (:func:`uptake_ratio`)."""

    input_spec = _RatioInputSpec
    output_spec = _RatioOutputSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "suvr.nii.gz")
        self._results["reference_mean"] = uptake_ratio(
            self.inputs.in_file, self.inputs.aseg, self.inputs.reference, out_file
        )
        self._results["out_file"] = out_file
        return runtime


class _SuvInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="static PET image")
    factor = traits.Float(mandatory=True, desc="image units -> SUV (g/mL)")


class _SuvOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="SUV image (g/mL)")


class StandardizedUptake(SimpleInterface):
    """SUV of the static image (:func:`standardized_uptake`)."""

    input_spec = _SuvInputSpec
    output_spec = _SuvOutputSpec

    def _run_interface(self, runtime):
        self._results["out_file"] = standardized_uptake(
            self.inputs.in_file, self.inputs.factor, str(Path(runtime.cwd) / "suv.nii.gz")
        )
        return runtime


class _MeasuresInputSpec(TraitedSpec):
    suvr = File(exists=True, mandatory=True, desc="SUVR image")
    aseg = File(exists=True, mandatory=True, desc="structure labels on its grid")
    prefix = traits.Str("pet", usedefault=True, desc="column prefix")


class _MeasuresOutputSpec(TraitedSpec):
    measures = traits.Dict(desc="column -> value of the measures table")


class PetMeasures(SimpleInterface):
    """Regional mean SUVR (:func:`pet_measures`)."""

    input_spec = _MeasuresInputSpec
    output_spec = _MeasuresOutputSpec

    def _run_interface(self, runtime):
        self._results["measures"] = pet_measures(
            self.inputs.suvr, self.inputs.aseg, self.inputs.prefix
        )
        return runtime
