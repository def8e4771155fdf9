"""Naming and atomic writing of BIDS derivatives: the one place that knows how outputs are called.

Every file is written to a hidden temporary name in its final folder and then renamed, so a
reader (or a crashed run) never sees half a file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import nibabel as nb

from bids_dl import __version__
from bids_dl.models.labels import STRUCTURES, TUMOR_LABELS, volume_column

#: Entity order of the BIDS specification, plus BEP016's model and param for diffusion maps
#: (``model-tensor_desc-dtinet_param-fa_dwimap``: param last, as that proposal writes it).
ENTITY_ORDER = (
    "sub", "ses", "task", "acq", "ce", "trc", "rec", "dir", "run", "echo", "part",
    "space", "res", "den", "seg", "from", "to", "mode", "model", "label", "meas", "desc",
    "param",
)  # fmt: skip
#: Entities of the source file that its derivatives keep.
INHERITED_ENTITIES = (
    "sub", "ses", "task", "acq", "ce", "trc", "rec", "dir", "run", "echo", "part",
)  # fmt: skip
_ENTITY = re.compile(r"(?P<key>[a-zA-Z]+)-(?P<value>[a-zA-Z0-9]+)")
_LABEL = re.compile(r"^[a-zA-Z0-9]+$")


def parse_entities(path: str | os.PathLike) -> dict[str, str]:
    """Return the ``key-value`` entities of a BIDS file name (the suffix and extension excluded)."""
    name = Path(path).name.split(".")[0]
    parts = name.split("_")
    return {m["key"]: m["value"] for p in parts[:-1] if (m := _ENTITY.fullmatch(p))}


def derivative_name(
    entities: Mapping[str, str | None], suffix: str, extension: str = ".nii.gz"
) -> str:
    """Build a BIDS file name from entities, in the specification's order.

    >>> derivative_name({"sub": "01", "desc": "brain"}, "mask")
    'sub-01_desc-brain_mask.nii.gz'
    """
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown BIDS entities: {sorted(unknown)}")
    if not entities.get("sub"):
        raise ValueError("a derivative needs a subject label")
    parts = []
    for key in ENTITY_ORDER:
        value = entities.get(key)
        if value is None:
            continue
        if not _LABEL.fullmatch(str(value)):
            raise ValueError(f"BIDS label {key}-{value!r} must be alphanumeric")
        parts.append(f"{key}-{value}")
    if not _LABEL.fullmatch(suffix):
        raise ValueError(f"BIDS suffix {suffix!r} must be alphanumeric")
    return "_".join([*parts, suffix]) + extension


def derivative_path(
    source_file: str | os.PathLike,
    suffix: str,
    datatype: str = "anat",
    extension: str = ".nii.gz",
    **entities: str | None,
) -> Path:
    """Path (relative to the derivatives root) of an output derived from ``source_file``.

    Entities of the source are kept unless overridden; pass ``name=None`` to drop one.
    """
    source = parse_entities(source_file)
    merged = {k: v for k, v in source.items() if k in INHERITED_ENTITIES}
    merged.update({k.rstrip("_"): v for k, v in entities.items()})
    merged = {k: v for k, v in merged.items() if v is not None}
    folder = Path(f"sub-{merged['sub']}")
    if merged.get("ses"):
        folder /= f"ses-{merged['ses']}"
    return folder / datatype / derivative_name(merged, suffix, extension)


def bids_uri(path: str | os.PathLike, root: str | os.PathLike, dataset: str = "") -> str:
    """BIDS URI of ``path`` inside the dataset ``root`` (``bids:raw:sub-01/anat/...``).

    A file that is a symbolic link (DataLad/git-annex datasets, links to shared storage) is
    named where it lies in the dataset, not where it points; folders may be links (a root
    given through one).
    """
    path, root = Path(os.path.abspath(path)), Path(os.path.abspath(root))
    if not path.is_relative_to(root):
        path, root = Path(os.path.realpath(path.parent)) / path.name, root.resolve()
    return f"bids:{dataset}:{path.relative_to(root).as_posix()}"


def write_file_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_nifti_atomic(image: nb.Nifti1Image, path: str | os.PathLike) -> Path:
    """Save a NIfTI image whole or not at all."""
    return write_file_atomic(Path(path), lambda tmp: nb.save(image, tmp))


def write_json_atomic(content: Mapping, path: str | os.PathLike) -> Path:
    """Save a JSON document (indented, keys sorted) whole or not at all."""
    text = json.dumps(content, indent=2, sort_keys=True, default=_json_default) + "\n"
    return write_text_atomic(text, path)


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Save a text file whole or not at all."""
    return write_file_atomic(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy a file whole or not at all."""
    return write_file_atomic(Path(path), lambda tmp: shutil.copyfile(source, tmp))


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def container_info() -> dict[str, str] | None:
    """The container this process runs in, as BIDS ``GeneratedBy.Container`` wants it."""
    for variable in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if image := os.environ.get(variable):
            return {"Type": "singularity", "URI": image}
    if Path("/.dockerenv").exists():
        return {"Type": "docker"}
    return None


def write_dataset_description(output_dir: str | os.PathLike, bids_dir: str | os.PathLike) -> Path:
    """Write the derivatives' ``dataset_description.json`` (GeneratedBy, SourceDatasets)."""
    output_dir = Path(output_dir)
    bids_dir = Path(bids_dir).resolve()
    generated_by = {
        "Name": "bids_dl",
        "Version": __version__,
        "Description": "Classical preprocessing and deep-learning analyses of a BIDS dataset",
    }
    if container := container_info():
        generated_by["Container"] = container
    source_description = bids_dir / "dataset_description.json"
    source_dataset = {"URL": bids_dir.as_uri()}
    if source_description.is_file():
        source_info = json.loads(source_description.read_text(encoding="utf-8"))
        if doi := source_info.get("DatasetDOI"):
            source_dataset["DOI"] = doi
        if version := source_info.get("BIDSVersion"):
            source_dataset["Version"] = version
    description = {
        "Name": "bids_dl derivatives",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source_dataset],
        "DatasetLinks": {"raw": bids_dir.as_uri()},
        "HowToAcknowledge": "Cite the tools named in each subject report's methods section.",
    }
    write_text_atomic(_DERIVATIVES_README.format(version=__version__), output_dir / "README.md")
    return write_json_atomic(description, output_dir / "dataset_description.json")


#: Files that BIDS has no name for yet: reports, figures, logs, transforms (BEP014) and
#: per-subject measure tables.
# The validator matches folders without a trailing slash ("sub-*/figures/" would not match).
#: Files the validator does not know yet: BEP016's diffusion maps (``*_dwimap``), the
#: rotated gradient files of a preprocessed series, the b=0 reference (``*_dwiref``) and the
#: diffusion confounds; ASLPrep's perfusion names (``*_cbf``, ``*_att``, ``*_aslref``) and the
#: ASL confounds and brain mask (BIDS has no mask in perf/); and crash logs (``sub-*/log``).
BIDSIGNORE = ("*.html", "logs", "figures", "sub-*/figures", "sub-*/log", "*_xfm.h5",
              "*_measures.tsv", "*_measures.json", "*_dwimap.nii.gz", "*_dwimap.json",
              "*_desc-preproc_dwi.bval", "*_desc-preproc_dwi.bvec", "*_dwiref.nii.gz",
              "*_dwiref.json",
              "**/dwi/*_timeseries.tsv", "**/dwi/*_timeseries.json", "*_cbf.nii.gz",
              "*_cbf.json", "*_cbf.tsv", "*_att.nii.gz", "*_att.json", "*_aslref.nii.gz",
              "*_aslref.json", "**/perf/*_timeseries.tsv", "**/perf/*_timeseries.json",
              "**/perf/*_mask.nii.gz", "**/perf/*_mask.json", "group", "*_relmat.tsv",
              "*_relmat.json", "*_components.nii.gz", "*_components.json",
              "**/func/*_timeseries.tsv", "**/func/*_timeseries.json", "*_boldref.nii.gz",
              "*_boldref.json", "**/pet/*_timeseries.tsv", "**/pet/*_timeseries.json")  # fmt: skip


_DERIVATIVES_README = """bids_dl derivatives
==================

Written by bids_dl {version}. Each participant has a folder of BIDS derivatives (sub-<label>/anat,
and sub-<label>/dwi for diffusion: preprocessed series, confounds, and tensor maps named after
the BEP016 proposal, *_dwimap, listed in .bidsignore until the validator knows them) and an HTML
report (sub-<label>.html, figures in sub-<label>/figures). The group level writes
phenotype/anatomical.tsv (one row per participant) with its data dictionary, and group.html.
The methods text of the run is in logs/CITATION.md.
"""


def write_bidsignore(output_dir: str | os.PathLike) -> Path:
    """List the non-BIDS files (reports, figures, logs) for the validator to skip."""
    return write_text_atomic("\n".join(BIDSIGNORE) + "\n", Path(output_dir) / ".bidsignore")


#: Labels of the tissue ``dseg`` (fMRIPrep's order): index, name, abbreviation, colour.
TISSUE_LOOKUP = (
    (1, "gray matter", "GM", "#1f77b4"),
    (2, "white matter", "WM", "#2ca02c"),
    (3, "cerebrospinal fluid", "CSF", "#d62728"),
)


def _write_lookup(rows, path: Path) -> Path:
    lines = ["index\tname\tabbreviation\tcolor"]
    lines += [f"{i}\t{name}\t{abbreviation}\t{color}" for i, name, abbreviation, color in rows]
    return write_text_atomic("\n".join(lines) + "\n", path)


def write_tissue_lookup(output_dir: str | os.PathLike) -> Path:
    """Root ``dseg.tsv``: by BIDS inheritance it describes every ``sub-*_dseg.nii.gz``."""
    return _write_lookup(TISSUE_LOOKUP, Path(output_dir) / "dseg.tsv")


def write_structure_lookup(output_dir: str | os.PathLike) -> Path:
    """Root ``desc-aseg_dseg.tsv``: describes every ``sub-*_desc-aseg_dseg.nii.gz``."""
    rows = [(value, name, abbreviation, color)
            for value, (name, _, abbreviation, color) in sorted(STRUCTURES.items())]  # fmt: skip
    return _write_lookup(rows, Path(output_dir) / "desc-aseg_dseg.tsv")


#: Colours of the tumour labels (BraTS viewers' convention: core red, edema green,
#: enhancing yellow) and their abbreviations.
TUMOR_STYLE = {1: ("NCR", "#ff3030"), 2: ("ED", "#30d030"), 4: ("ET", "#ffe020")}


def write_tumor_lookup(output_dir: str | os.PathLike) -> Path:
    """Root ``desc-tumor_dseg.tsv``: describes every ``sub-*_desc-tumor_dseg.nii.gz``."""
    rows = [(value, name, *TUMOR_STYLE[value]) for value, (name, _) in TUMOR_LABELS.items()]
    return _write_lookup(rows, Path(output_dir) / "desc-tumor_dseg.tsv")


#: Why the tissue measures of a participant can be n/a.
_TISSUES_NOT_MEASURED = (
    "; n/a when the tissues are Atropos classes of a contrast-enhanced T1w (the participant "
    "has no plain T1w): they take enhancing vessels and tumour for white matter"
)
#: Data dictionary of the measures table (BIDS-style JSON sidecar).
MEASURES_DICTIONARY = {
    "participant_id": {"Description": "BIDS participant label"},
    "brain_mask_mm3": {"Description": "volume of the brain mask", "Units": "mm^3"},
    "gm_mm3": {
        "Description": "grey-matter volume (sum of the GM probability map)" + _TISSUES_NOT_MEASURED,
        "Units": "mm^3",
    },
    "wm_mm3": {
        "Description": "white-matter volume (sum of the WM probability map)"
        + _TISSUES_NOT_MEASURED,
        "Units": "mm^3",
    },
    "csf_mm3": {
        "Description": "CSF volume inside the brain mask (sum of the CSF map)"
        + _TISSUES_NOT_MEASURED,
        "Units": "mm^3",
    },
    "template_correlation": {
        "Description": "Pearson correlation of the T1w in template space with the template T1w, "
        "inside the template brain mask (registration quality; 1 is perfect)"
    },
    "template_dice_gm": {
        "Description": "Dice of the subject's GM labels in template space with the template GM "
        "map thresholded at 0.5 (registration and segmentation quality)" + _TISSUES_NOT_MEASURED
    },
    "template_dice_wm": {
        "Description": "Dice of the subject's WM labels in template space with the template WM "
        "map thresholded at 0.5" + _TISSUES_NOT_MEASURED
    },
}

MEASURES_DICTIONARY.update(
    {
        volume_column(value): {
            "Description": f"volume of {name} (voxels of the structure segmentation)",
            "Units": "mm^3",
        }
        for value, (name, *_) in STRUCTURES.items()
    }
)
MEASURES_DICTIONARY["total_intracranial_mm3"] = {
    "Description": "total intracranial volume: all structures of the segmentation, CSF included",
    "Units": "mm^3",
}
MEASURES_DICTIONARY.update({
    "whole_tumor_mm3": {"Description": "whole tumour (labels 1, 2, 4 of desc-tumor_dseg)",
                        "Units": "mm^3"},
    "tumor_core_mm3": {"Description": "tumour core: necrotic and non-enhancing core plus "
                       "enhancing tumour (labels 1, 4)", "Units": "mm^3"},
    "enhancing_tumor_mm3": {"Description": "enhancing tumour (label 4)", "Units": "mm^3"},
    "edema_mm3": {"Description": "peritumoural edema (label 2)", "Units": "mm^3"},
    "wmh_count": {"Description": "number of white-matter hyperintensities (26-connected "
                  "components of desc-wmh_mask)"},
    "wmh_mm3": {"Description": "white-matter hyperintensity volume (desc-wmh_mask)",
                "Units": "mm^3"},
})  # fmt: skip
MEASURES_DICTIONARY.update(
    {
        f"{contrast.lower()}_brain_coverage": {
            "Description": f"share of the brain mask inside the {name}'s field of view after "
            "registration to the T1w (0-1); the lesion models take the uncovered brain as having "
            f"no {name}",
        }
        for contrast, name in (
            ("FLAIR", "FLAIR"),
            ("T1ce", "contrast-enhanced T1w"),
            ("T2w", "T2w"),
        )
    }
)

#: Regions of the diffusion measures: column part -> (label image, label value, name); the
#: structures' rows need the structures model's labels (``aseg``)
DWI_MEASURE_REGIONS = {
    "gm": ("dseg", 1, "grey matter (tissue labels)"),
    "wm": ("dseg", 2, "white matter (tissue labels)"),
    "csf": ("dseg", 3, "CSF (tissue labels)"),
    "left_cerebral_wm": ("aseg", 2, "left cerebral white matter (structures)"),
    "right_cerebral_wm": ("aseg", 41, "right cerebral white matter (structures)"),
    "left_cerebellum_wm": ("aseg", 7, "left cerebellar white matter (structures)"),
    "right_cerebellum_wm": ("aseg", 46, "right cerebellar white matter (structures)"),
    "brainstem": ("aseg", 16, "brain stem (structures)"),
}
MEASURES_DICTIONARY.update(
    {
        f"dwi_{measure}_mean_{region}": {
            "Description": f"mean {label} of the measured tensor fit (the participant's first "
            f"diffusion series) in {name}, inside the diffusion brain mask on the T1w grid; n/a "
            "below 10 voxels",
            **({"Units": "10^-3 mm^2/s"} if measure == "md" else {}),
        }
        for region, (_, _, name) in DWI_MEASURE_REGIONS.items()
        for measure, label in (("fa", "FA"), ("md", "MD"))
    }
)

#: Regions of the perfusion measures, as ``DWI_MEASURE_REGIONS``
ASL_MEASURE_REGIONS = {
    "gm": ("dseg", 1, "grey matter (tissue labels)"),
    "wm": ("dseg", 2, "white matter (tissue labels)"),
    "left_cortex": ("aseg", 3, "left cerebral cortex (structures)"),
    "right_cortex": ("aseg", 42, "right cerebral cortex (structures)"),
    "left_thalamus": ("aseg", 10, "left thalamus (structures)"),
    "right_thalamus": ("aseg", 49, "right thalamus (structures)"),
    "left_putamen": ("aseg", 12, "left putamen (structures)"),
    "right_putamen": ("aseg", 51, "right putamen (structures)"),
    "left_hippocampus": ("aseg", 17, "left hippocampus (structures)"),
    "right_hippocampus": ("aseg", 53, "right hippocampus (structures)"),
    "left_cerebellum_cortex": ("aseg", 8, "left cerebellar cortex (structures)"),
    "right_cerebellum_cortex": ("aseg", 47, "right cerebellar cortex (structures)"),
}
MEASURES_DICTIONARY.update(
    {
        f"asl_cbf_mean_{region}": {
            "Description": f"mean measured CBF (the participant's first ASL series) in {name}, "
            "on the T1w grid inside the brain mask; n/a below 10 voxels",
            "Units": "mL/100 g/min",
        }
        for region, (_, _, name) in ASL_MEASURE_REGIONS.items()
    }
)

#: regions that gather several structures: column part -> (label values, name)
PET_AGGREGATES = {
    "cortex": ((3, 42), "cerebral cortex (left and right)"),
    "cerebral_wm": ((2, 41), "cerebral white matter (left and right)"),
    "deep_gm": ((10, 11, 12, 13, 26, 49, 50, 51, 52, 58),
                "deep grey matter (thalamus, caudate, putamen, pallidum, accumbens)"),
}  # fmt: skip
#: regions of the PET measures for :func:`regional_means`: each structure (its volume
#: column without ``_mm3``: ``left_hippocampus``) and the aggregates (label image
#: ``aggregate``, numbered in ``PET_AGGREGATES`` order from 1)
PET_MEASURE_REGIONS = {
    **{volume_column(v).removesuffix("_mm3"): ("aseg", v, row[0]) for v, row in STRUCTURES.items()},
    **{key: ("aggregate", i, name) for i, (key, (_, name)) in enumerate(PET_AGGREGATES.items(), 1)},
}
MEASURES_DICTIONARY.update(
    {
        f"{prefix}_suvr_mean_{region}": {
            "Description": f"mean {what} in {name}, on the T1w grid where it is non-zero; n/a "
            "below 10 voxels",
            "Units": "unitless",
        }
        for region, (_, _, name) in PET_MEASURE_REGIONS.items()
        for prefix, what in (
            ("pet", "SUVR of the participant's first PET (reference region in its sidecar)"),
            (
                "pet_imputed",
                "SUVR of the IMPUTED PET (synthetic: predicted from the T1w, not measured)",
            ),
        )
    }
)
