"""Nipype interfaces that run a model bundle (bids_dl.models) on an image."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import Directory, File, SimpleInterface, TraitedSpec, traits

from bids_dl.images import save_image
from bids_dl.models.labels import TISSUE_CLASSES
from bids_dl.workflows.interfaces.images import largest_component_filled


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load_model(bundle: str, task: str, num_threads: int):
    """The card and network of a bundle made for ``task``, torch limited to ``num_threads``."""
    import torch

    from bids_dl.models.bundle import load_bundle

    torch.set_num_threads(max(1, num_threads))
    card, network = load_bundle(bundle)
    if card.task != task:
        raise ValueError(f"{bundle} is a {card.task!r} model, not a {task!r} model")
    return card, network


def _identity(card, bundle: str) -> dict:
    """Name, version and weights' sha256 of a model, for the sidecars."""
    from bids_dl.models.bundle import weights_sha256

    return {"Name": card.name, "Version": card.version, "SHA256": weights_sha256(bundle)}


def model_brain_mask(
    in_file: str, bundle: str, out_file: str, device: str = "auto", num_threads: int = 1
) -> dict:
    """Brain mask from a brain-mask bundle: labels == 1, largest component, holes filled.

    Returns the model's identity (name, version, weights' sha256) for the sidecar.
    """
    from bids_dl.models.inference import segment

    card, network = _load_model(bundle, "brain_mask", num_threads)
    image = nb.load(in_file)
    labels, _ = segment(image, card, network, device=resolve_device(device))
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
    from bids_dl.models.labels import TISSUE_CLASSES, tissue_groups, tissue_lookup

    card, network = _load_model(bundle, "structures", num_threads)
    image = nb.load(in_file)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    labels, tissues = segment(
        image, card, network, device=resolve_device(device), mask=mask, groups=tissue_groups()
    )
    out = Path(out_dir)
    save_image(labels.astype(np.uint8), image.affine, out / "aseg.nii.gz")
    save_image(tissue_lookup()[labels], image.affine, out / "dseg.nii.gz")
    for name, probability in zip(TISSUE_CLASSES, tissues, strict=True):
        save_image(probability, image.affine, out / f"probseg_{name}.nii.gz")
    return _identity(card, bundle)


class _ModelMaskInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="anatomical image, any contrast")
    bundle = Directory(exists=True, mandatory=True, desc="model bundle")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True)
    num_threads = traits.Int(1, usedefault=True, desc="torch CPU threads")


class _ModelMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="binary brain mask on the input grid")
    model = traits.Dict(desc="name, version and sha256 of the model")


class ModelBrainMask(SimpleInterface):
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


class ModelSegmentation(SimpleInterface):
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
