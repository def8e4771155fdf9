"""The PET imputation network as a nipype interface: an FDG-like SUVR image predicted from the
T1w of a participant (a synthetic image, labelled as such wherever it is written)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import File, TraitedSpec, traits

from bids_dl.images import save_image
from bids_dl.workflows.interfaces.deep_learning import (
    _identity,
    _load_model,
    _ModelInterface,
    _ModelRunInputSpec,
)
from bids_dl.workflows.interfaces.pet_preproc import labels_on_grid


def impute_pet(
    t1w_file: str,
    mask_file: str,
    aseg_file: str,
    bundle: str,
    out_file: str,
    device: str = "auto",
    num_threads: int = 1,
) -> dict:
    """The network's SUVR on the T1w grid, zero outside the brain mask (mask and structures
    on the T1w grid); returns the model's identity with what the sidecar must say of its
    training data."""
    from bids_dl.models.pet_imputation import impute_suvr

    card, network, device = _load_model(bundle, "pet", num_threads, device)
    image = nb.load(t1w_file)
    t1w = np.asarray(image.dataobj, dtype=np.float32)
    mask = np.asarray(nb.load(mask_file).dataobj) > 0
    labels = labels_on_grid(t1w_file, aseg_file)
    suvr = impute_suvr(t1w, mask, labels, image.affine, network, card, device=device)
    save_image(np.where(mask, suvr, 0).astype(np.float32), image.affine, out_file)
    return {**_identity(card, bundle), "TrainingData": training_data(card.training)}


def training_data(training: dict) -> str:
    """``simulated`` or ``real``, as the card's training source says."""
    return "real" if training.get("config", {}).get("source") == "bids" else "simulated"


class _ImputeInputSpec(_ModelRunInputSpec):
    t1w = File(exists=True, mandatory=True, desc="preprocessed T1w")
    brain_mask = File(exists=True, mandatory=True, desc="the T1w's brain mask")
    aseg = File(exists=True, mandatory=True, desc="the T1w's structures (FreeSurfer labels)")


class _ImputeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="imputed SUVR on the T1w grid")
    model = traits.Dict(desc="name, version, sha256 and training data of the model")


class ImputePet(_ModelInterface):
    """An FDG-like SUVR image predicted from the T1w (:func:`impute_pet`)."""

    input_spec = _ImputeInputSpec
    output_spec = _ImputeOutputSpec

    def _run_interface(self, runtime):
        out_file = str(Path(runtime.cwd) / "imputed_suvr.nii.gz")
        self._results["model"] = impute_pet(
            self.inputs.t1w,
            self.inputs.brain_mask,
            self.inputs.aseg,
            self.inputs.bundle,
            out_file,
            self.inputs.device,
            self.inputs.num_threads,
        )
        self._results["out_file"] = out_file
        return runtime
