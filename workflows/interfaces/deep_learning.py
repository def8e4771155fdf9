"""Nipype interfaces that run a model bundle (bids_dl.models) on an image."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_dl.images import save_image
from bids_dl.models.card import CARD, WEIGHTS, ModelCard, weights_sha256
from bids_dl.models.labels import TISSUE_CLASSES, TUMOR_REGIONS, tissue_groups, tissue_lookup
from bids_dl.models.metrics import connected_lesions, voxel_volume_mm3
from bids_dl.models.postprocessing import postprocess
from bids_dl.workflows.interfaces.images import largest_component_filled

LOGGER = logging.getLogger("bids_dl.lesions")
#: Below this share of the brain, a registered contrast's field of view is worth a warning.
LOW_BRAIN_COVERAGE = 0.5


def _load_model(bundle: str, task: str, num_threads: int, device: str):
    """The card and network of a bundle made for ``task``, torch limited to ``num_threads``,
    and the device it runs on (``auto`` resolved)."""
    # torch is imported where a model runs, so that building a workflow does not load it
    import torch

    from bids_dl.models.bundle import load_bundle
    from bids_dl.models.device import resolve_device

    torch.set_num_threads(max(1, num_threads))
    card, network = load_bundle(bundle)
    if card.task != task:
        raise ValueError(f"{bundle} is a {card.task!r} model, not a {task!r} model")
    return card, network, resolve_device(device)


def _identity(card: ModelCard, bundle: str) -> dict:
    """Name, version and weights' sha256 of a model, for the sidecars."""
    return {"Name": card.name, "Version": card.version, "SHA256": weights_sha256(bundle)}


def model_brain_mask(
    in_file: str, bundle: str, out_file: str, device: str = "auto", num_threads: int = 1
) -> dict:
    """Brain mask from a brain-mask bundle: labels == 1, largest component, holes filled.

    Returns the model's identity (name, version, weights' sha256) for the sidecar.
    """
    from bids_dl.models.inference import segment

    card, network, device = _load_model(bundle, "brain_mask", num_threads, device)
    image = nb.load(in_file)
    labels, _ = segment(image, card, network, device=device)
    mask = largest_component_filled(labels == 1)
    if not mask.any():
        raise ValueError(
            f"the brain-extraction model found no brain in {in_file}: is it a head image? "
            "(--brain-extraction-model template selects the registration baseline)"
        )
    save_image(mask.astype(np.uint8), image.affine, out_file)
    return _identity(card, bundle)


def model_structures(
    in_file: str,
    mask_file: str,
    bundle: str,
    out_dir: str,
    device: str = "auto",
    num_threads: int = 1,
) -> dict:
    """Structure labels, tissue labels and GM/WM/CSF probabilities from a structures bundle.

    The brain mask places the model's window (as in training); labels are the model's own, not
    clipped to the mask. Tissue labels (1 GM, 2 WM, 3 CSF) are the structures' classes.
    """
    from bids_dl.models.inference import segment

    card, network, device = _load_model(bundle, "structures", num_threads, device)
    image = nb.load(in_file)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    labels, tissues = segment(
        image, card, network, device=device, mask=mask, groups=tissue_groups()
    )
    out = Path(out_dir)
    save_image(labels.astype(np.uint8), image.affine, out / "aseg.nii.gz")
    save_image(tissue_lookup()[labels], image.affine, out / "dseg.nii.gz")
    for name, probability in zip(TISSUE_CLASSES, tissues, strict=True):
        save_image(probability, image.affine, out / f"probseg_{name}.nii.gz")
    return _identity(card, bundle)


class _ModelRunInputSpec(TraitedSpec):
    """Which model and where it runs; ``use_gpu`` is the flag nipype's MultiProc reads for GPU
    slots."""

    bundle = Directory(exists=True, mandatory=True, desc="model bundle")
    model_files = traits.List(
        File(exists=True),
        desc="the bundle's card and weights, set from ``bundle``: nipype hashes files but not "
        "folders, so this makes a changed model re-run the node instead of reusing its cache",
    )
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True)
    use_gpu = traits.Bool(
        False, usedefault=True, desc="a GPU node for nipype's MultiProc (one at a time)"
    )
    num_threads = traits.Int(1, usedefault=True, desc="torch CPU threads")


class _ModelInterface(SimpleInterface):
    """An interface that runs a bundle; its card and weights are part of the node's hash."""

    def __init__(self, **inputs):
        super().__init__(**inputs)
        self.inputs.on_trait_change(self._list_model_files, "bundle")
        self._list_model_files()

    def _list_model_files(self) -> None:
        if isdefined(self.inputs.bundle):
            folder = Path(self.inputs.bundle)
            files = (folder / CARD, folder / WEIGHTS)  # a bad bundle fails when the node runs
            self.inputs.model_files = [str(path) for path in files if path.is_file()]


class _ModelMaskInputSpec(_ModelRunInputSpec):
    in_file = File(exists=True, mandatory=True, desc="anatomical image, any contrast")


class _ModelMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="binary brain mask on the input grid")
    model = traits.Dict(desc="name, version and sha256 of the model")


class ModelBrainMask(_ModelInterface):
    """Deep-learning brain extraction with a bundle."""

    input_spec = _ModelMaskInputSpec
    output_spec = _ModelMaskOutputSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "brain_mask.nii.gz")
        self._results["model"] = model_brain_mask(
            self.inputs.in_file,
            self.inputs.bundle,
            out_file,
            self.inputs.device,
            self.inputs.num_threads,
        )
        self._results["out_file"] = out_file
        return runtime


class _ModelSegmentationInputSpec(_ModelMaskInputSpec):
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the same grid")


class _ModelSegmentationOutputSpec(TraitedSpec):
    aseg = File(exists=True, desc="structure labels (FreeSurfer values)")
    dseg = File(exists=True, desc="tissue labels: 1 GM, 2 WM, 3 CSF")
    probseg = traits.List(File(exists=True), desc="GM, WM and CSF probabilities")
    model = traits.Dict(desc="name, version and sha256 of the model")


class ModelSegmentation(_ModelInterface):
    """Deep-learning segmentation of brain structures (and tissues derived from them)."""

    input_spec = _ModelSegmentationInputSpec
    output_spec = _ModelSegmentationOutputSpec

    def _run_interface(self, runtime):
        self._results["model"] = model_structures(
            self.inputs.in_file,
            self.inputs.brain_mask,
            self.inputs.bundle,
            runtime.cwd,
            self.inputs.device,
            self.inputs.num_threads,
        )
        cwd = Path(runtime.cwd)
        self._results["aseg"] = str(cwd / "aseg.nii.gz")
        self._results["dseg"] = str(cwd / "dseg.nii.gz")
        self._results["probseg"] = [str(cwd / f"probseg_{t}.nii.gz") for t in TISSUE_CLASSES]
        return runtime


def lesion_measures(labels: np.ndarray, voxel_mm3: float, task: str) -> dict[str, float | int]:
    """Tumour: volumes (mm^3) of the BraTS regions and of edema; WMH: lesion count (26-connected
    components) and volume."""
    if task == "wmh":
        lesions = labels > 0
        _, count = connected_lesions(lesions)
        return {"wmh_count": int(count), "wmh_mm3": round(float(lesions.sum()) * voxel_mm3, 1)}
    volumes = {
        f"{region}_mm3": float(np.isin(labels, members).sum()) * voxel_mm3
        for region, members in TUMOR_REGIONS.items()
    }
    volumes["edema_mm3"] = float((labels == 2).sum()) * voxel_mm3
    return {key: round(value, 1) for key, value in volumes.items()}


def model_lesions(
    task: str,
    bundle: str,
    t1w: str,
    brain_mask: str,
    out_file: str,
    contrasts: dict[str, str | None],
    device: str = "auto",
    num_threads: int = 1,
    reference_contrast: str = "T1w",
    coverages: dict[str, str | None] | None = None,
) -> tuple[dict, dict]:
    """Tumour labels (BraTS values) or a WMH mask from a lesion bundle, on the T1w grid.

    ``contrasts`` maps FLAIR, T1ce and T2w to files already on the T1w grid (None when the
    subject has none); the preprocessed reference ``t1w`` fills the model's
    ``reference_contrast`` channel (T1w, or T1ce when the session's only T1-weighted image is
    contrast-enhanced). Contrasts the model has no channel for are ignored, missing ones are
    fed as zeros (the models were trained with channel dropout). Labels outside the brain mask
    are cleared. ``coverages`` maps a registered contrast to the mask of the T1w voxels inside
    its field of view (``coregister_rigid``): outside it, the contrast counts as missing.

    Returns the measures (volumes, lesion count, and the share of the brain each registered
    contrast the model used covers, ``<contrast>_brain_coverage``) and the model's identity.
    """
    from bids_dl.models.inference import segment

    card, network, device = _load_model(bundle, task, num_threads, device)
    available = {**contrasts, reference_contrast: t1w}
    wanted = card.inputs["contrasts"]
    essential = {"tumor": ("FLAIR", "T1ce"), "wmh": ("FLAIR",)}[task]
    if not any(available.get(c) for c in essential if c in wanted):
        raise ValueError(f"the {task} model needs a {' or '.join(essential)} image")
    reference = nb.load(t1w)
    images = [nb.load(available[c]) if available.get(c) else None for c in wanted]
    mask = np.asarray(nb.load(brain_mask).dataobj) > 0
    coverage = {
        c: np.asarray(nb.load(path).dataobj) > 0
        for c, path in (coverages or {}).items()
        if path and c in wanted and available.get(c)
    }
    brain_coverage = {c: round(float(covered[mask].mean()), 3) for c, covered in coverage.items()}
    for contrast, share in brain_coverage.items():
        if share < LOW_BRAIN_COVERAGE:
            LOGGER.warning(
                "the %s covers %.0f%% of the brain after registration to the T1w: the %s model "
                "does not see it elsewhere; check the coregistration figure of the report",
                contrast, 100 * share, task,
            )  # fmt: skip
    labels, probabilities = segment(
        images, card, network, device=device, mask=mask,
        coverage=[coverage.get(c) for c in wanted],
    )  # fmt: skip
    labels[~mask] = 0
    voxel_mm3 = voxel_volume_mm3(reference)
    labels = postprocess(labels, card, voxel_mm3, probabilities)
    if task == "wmh":
        labels = (labels > 0).astype(np.uint8)
    save_image(labels.astype(np.uint8), reference.affine, out_file)
    measures = lesion_measures(labels, voxel_mm3, task)
    measures.update({f"{c.lower()}_brain_coverage": share for c, share in brain_coverage.items()})
    return measures, _identity(card, bundle)


class _ModelLesionsInputSpec(_ModelRunInputSpec):
    task = traits.Enum("tumor", "wmh", mandatory=True)
    t1w = File(exists=True, mandatory=True, desc="preprocessed T1w (the output grid)")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask on the T1w grid")
    flair = File(exists=True, desc="FLAIR on the T1w grid")
    t1ce = File(exists=True, desc="contrast-enhanced T1w on the T1w grid")
    t2w = File(exists=True, desc="T2w on the T1w grid")
    flair_coverage = File(exists=True, desc="T1w voxels inside the FLAIR's field of view")
    t1ce_coverage = File(exists=True, desc="T1w voxels inside the ce-T1w's field of view")
    t2w_coverage = File(exists=True, desc="T1w voxels inside the T2w's field of view")
    reference_contrast = traits.Enum(
        "T1w", "T1ce", usedefault=True, desc="the model channel the reference ``t1w`` fills"
    )


class _ModelLesionsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="tumour labels (BraTS values) or binary WMH mask")
    measures = traits.Dict(desc="volumes (mm^3) and, for WMH, the lesion count")
    model = traits.Dict(desc="name, version and sha256 of the model")


class ModelLesions(_ModelInterface):
    """Deep-learning tumour or white-matter-hyperintensity segmentation with a bundle."""

    input_spec = _ModelLesionsInputSpec
    output_spec = _ModelLesionsOutputSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / f"{self.inputs.task}.nii.gz")

        def given(field: str) -> str | None:
            value = getattr(self.inputs, field)
            return value if isdefined(value) else None

        names = {"FLAIR": "flair", "T1ce": "t1ce", "T2w": "t2w"}
        contrasts = {name: given(field) for name, field in names.items()}
        coverages = {name: given(f"{field}_coverage") for name, field in names.items()}
        self._results["measures"], self._results["model"] = model_lesions(
            self.inputs.task,
            self.inputs.bundle,
            self.inputs.t1w,
            self.inputs.brain_mask,
            out_file,
            contrasts,
            self.inputs.device,
            self.inputs.num_threads,
            self.inputs.reference_contrast,
            coverages,
        )
        self._results["out_file"] = out_file
        return runtime
