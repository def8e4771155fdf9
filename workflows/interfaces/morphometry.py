"""Per-subject measures for statistics: tissue and structure volumes, registration quality,
one TSV row."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_dl.models.metrics import dice, voxel_volume_mm3
from bids_dl.templates import TemplateFiles

#: The measures that come from the tissue classes (written n/a where those are not valid).
TISSUE_MEASURES = ("gm_mm3", "wm_mm3", "csf_mm3", "template_dice_gm", "template_dice_wm")


def tissue_volumes(probseg_files: dict[str, str], mask_file: str) -> dict[str, float]:
    """Tissue volumes in mm^3: the sum of each probability map times the voxel volume."""
    mask = nb.load(mask_file)
    volumes = {
        "brain_mask_mm3": float(np.count_nonzero(mask.get_fdata() > 0.5)) * voxel_volume_mm3(mask)
    }
    for name, path in probseg_files.items():
        image = nb.load(path)
        volumes[f"{name.lower()}_mm3"] = float(image.get_fdata().sum()) * voxel_volume_mm3(image)
    return {key: round(value, 1) for key, value in volumes.items()}


def structure_volumes(aseg_file: str) -> dict[str, float]:
    """Volume (mm^3) of every structure of the segmentation, and the total intracranial volume.

    Columns are named after the FreeSurfer structure names; the total intracranial volume is
    the sum of all structures, CSF included (as SynthSeg reports it).
    """
    from bids_dl.models.labels import STRUCTURES, volume_column

    image = nb.load(aseg_file)
    labels = np.asarray(image.dataobj).astype(np.int32).ravel()
    counts = np.bincount(labels, minlength=max(STRUCTURES) + 1)
    voxel = voxel_volume_mm3(image)
    volumes = {volume_column(value): float(counts[value]) * voxel for value in STRUCTURES}
    volumes["total_intracranial_mm3"] = float(counts[list(STRUCTURES)].sum()) * voxel
    return {key: round(value, 1) for key, value in volumes.items()}


def registration_quality(
    std_t1w_file: str, std_dseg_file: str, template: TemplateFiles
) -> dict[str, float]:
    """How well the T1w matches the template after registration.

    Pearson correlation of intensities inside the template brain, and Dice of the subject's
    GM and WM labels (carried to template space) with the template's maps thresholded at 0.5.
    """
    brain = nb.load(template.brain_mask).get_fdata() > 0.5
    subject = nb.load(std_t1w_file).get_fdata()[brain]
    reference = nb.load(template.t1w).get_fdata()[brain]
    labels = np.asarray(nb.load(std_dseg_file).dataobj)
    quality = {"template_correlation": float(np.corrcoef(subject, reference)[0, 1])}
    for index, name, path in ((1, "gm", template.gm), (2, "wm", template.wm)):
        quality[f"template_dice_{name}"] = dice(labels == index, nb.load(path).get_fdata() > 0.5)
    return {key: round(value, 4) for key, value in quality.items()}


def write_measures_tsv(measures: dict[str, object], out_file: str | Path) -> Path:
    """One header line, one row: the format the group level concatenates."""
    out_file = Path(out_file)
    with out_file.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(measures), delimiter="\t", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerow(measures)
    return out_file


class _MeasuresInputSpec(TraitedSpec):
    subject_label = traits.Str(mandatory=True)
    probseg = InputMultiObject(File(exists=True), mandatory=True, desc="GM, WM, CSF maps")
    brain_mask = File(exists=True, mandatory=True)
    std_t1w = File(exists=True, mandatory=True, desc="T1w in template space")
    std_dseg = File(exists=True, mandatory=True, desc="tissue labels in template space")
    template_dir = traits.Str(mandatory=True)
    aseg = File(exists=True, desc="structure labels (optional: adds their volumes and TIV)")
    extra_measures = InputMultiObject(
        traits.Dict(), desc="measures of other analyses (lesion volumes, counts) to add"
    )
    tissues_from_contrast_enhanced = traits.Bool(
        False,
        usedefault=True,
        desc="the tissues are Atropos intensity classes of a contrast-enhanced T1w, which take "
        "enhancing vessels and tumour for white matter: their measures are written n/a",
    )


class _MeasuresOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="one-row TSV")
    measures = traits.Dict()


class AnatomicalMeasures(SimpleInterface):
    """Tissue volumes (mm^3) and registration quality of one subject, as a one-row TSV."""

    input_spec = _MeasuresInputSpec
    output_spec = _MeasuresOutputSpec

    def _run_interface(self, runtime):
        from bids_dl.templates import write_template_files

        template = write_template_files(self.inputs.template_dir)
        names = ("GM", "WM", "CSF")
        measures: dict[str, object] = {"participant_id": f"sub-{self.inputs.subject_label}"}
        measures.update(
            tissue_volumes(
                dict(zip(names, self.inputs.probseg, strict=True)), self.inputs.brain_mask
            )
        )
        if isdefined(self.inputs.aseg):
            measures.update(structure_volumes(self.inputs.aseg))
        measures.update(registration_quality(self.inputs.std_t1w, self.inputs.std_dseg, template))
        if self.inputs.tissues_from_contrast_enhanced:
            measures.update(dict.fromkeys(TISSUE_MEASURES, "n/a"))
        if isdefined(self.inputs.extra_measures):
            for extra in self.inputs.extra_measures:
                measures.update(extra)
        self._results["measures"] = measures
        self._results["out_file"] = str(
            write_measures_tsv(measures, Path(runtime.cwd) / "measures.tsv")
        )
        return runtime
