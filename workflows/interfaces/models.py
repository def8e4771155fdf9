"""Nipype interfaces that run a model bundle (bids_dl.models) on an image."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import Directory, File, SimpleInterface, TraitedSpec, traits

from bids_dl.images import save_image
from bids_dl.workflows.interfaces.images import largest_component_filled


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_brain_mask(
    in_file: str, bundle: str, out_file: str, device: str = "auto", num_threads: int = 1
) -> dict:
    """Brain mask from a brain-mask bundle: labels == 1, largest component, holes filled.

    Returns the model's identity (name, version, weights' sha256) for the sidecar.
    """
    import torch

    from bids_dl.models.bundle import load_bundle, weights_sha256
    from bids_dl.models.inference import segment

    torch.set_num_threads(max(1, num_threads))
    card, network = load_bundle(bundle)
    if card.task != "brain_mask":
        raise ValueError(f"{bundle} is a {card.task!r} model, not a brain_mask model")
    image = nb.load(in_file)
    labels, _ = segment(image, card, network, device=resolve_device(device))
    mask = largest_component_filled(labels == 1)
    save_image(mask.astype(np.uint8), image.affine, out_file)
    return {"Name": card.name, "Version": card.version, "SHA256": weights_sha256(bundle)}


class _ModelMaskInputSpec(TraitedSpec):
    in_file = File(exists=True, mandatory=True, desc="anatomical image, any contrast")
    bundle = Directory(exists=True, mandatory=True, desc="brain_mask model bundle")
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
