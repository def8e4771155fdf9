"""The sample dataset's PET: a dynamic FDG-like series of a subject's brain placed with its
pose, its uptake painted on the template's tissue maps (cerebral grey matter above the
cerebellum's, white matter low, CSF near zero), blurred to a scanner's resolution, with the
frames of an FDG time course (``models.pet_simulation.simulate_frames``) and a complete BIDS
PET sidecar; the true SUVR goes to the truth folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage

from bids_dl.derivatives import write_json_atomic, write_nifti_atomic

#: the template's 1 mm tissue maps are subsampled by this (2 mm voxels)
TEMPLATE_STEP = 2
MARGIN_VOXELS = 4
#: FDG uptake relative to cerebellar grey matter (the SUVR reference)
UPTAKE = {"cerebral_gm": 1.3, "cerebellar_gm": 1.0, "wm": 0.55, "csf": 0.05}
#: below this MNI z and behind this y (mm), grey matter counts as cerebellar
CEREBELLUM_MAX_Z_MM = -22.0
CEREBELLUM_MAX_Y_MM = -38.0
SCANNER_FWHM_MM = 7.0
#: frames of a 60-minute dynamic acquisition from injection (s)
FRAME_STARTS_S = (0, 60, 120, 300, 600, 1200, 1800, 2400, 3000)
FRAME_DURATIONS_S = (60, 60, 180, 300, 600, 600, 600, 600, 600)
INJECTED_MBQ = 185.0
#: SUV of the cerebellar grey matter, setting the activity scale with the dose and weight
CEREBELLUM_SUV = 6.0
TRACER = "FDG"


@dataclass(frozen=True)
class SamplePet:
    """A simulated PET and its truth."""

    frames: np.ndarray
    affine: np.ndarray
    suvr: np.ndarray


def true_suvr(tissues: np.ndarray, template_affine: np.ndarray) -> np.ndarray:
    """The noise-free SUVR on the template's 1 mm grid from its tissue fractions (CSF, GM,
    WM), before the scanner's blur."""
    csf, gm, wm = tissues
    coordinates = nb.affines.apply_affine(template_affine, np.indices(gm.shape).reshape(3, -1).T)
    y, z = coordinates[:, 1].reshape(gm.shape), coordinates[:, 2].reshape(gm.shape)
    cerebellar = (z < CEREBELLUM_MAX_Z_MM) & (y < CEREBELLUM_MAX_Y_MM)
    grey = np.where(cerebellar, UPTAKE["cerebellar_gm"], UPTAKE["cerebral_gm"])
    return (grey * gm + UPTAKE["wm"] * wm + UPTAKE["csf"] * csf).astype(np.float32)


def simulate_sample_pet(
    tissues: np.ndarray,
    template_affine: np.ndarray,
    pose: np.ndarray,
    rng: np.random.Generator,
    weight_kg: float,
) -> SamplePet:
    """A dynamic FDG-like series of the head whose template-space tissue fractions sit at
    ``pose``, in Bq/mL decay-corrected to injection."""
    from bids_dl.models.pet_simulation import simulate_frames

    step = tissues[:, ::TEMPLATE_STEP, ::TEMPLATE_STEP, ::TEMPLATE_STEP]
    grid = template_affine @ np.diag([TEMPLATE_STEP] * 3 + [1])
    suvr = true_suvr(step, grid)
    inside = np.argwhere(step.sum(0) > 0.5)
    start = np.maximum(inside.min(0) - MARGIN_VOXELS, 0)
    stop = inside.max(0) + MARGIN_VOXELS + 1
    box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    sigma = SCANNER_FWHM_MM / (2 * np.sqrt(2 * np.log(2))) / (TEMPLATE_STEP * 1.0)
    blurred = ndimage.gaussian_filter(suvr, sigma)[box]
    grid[:3, 3] = nb.affines.apply_affine(grid, start)
    scale = CEREBELLUM_SUV * INJECTED_MBQ * 1e6 / (weight_kg * 1e3)
    frames = simulate_frames(
        blurred, np.array(FRAME_STARTS_S, float), np.array(FRAME_DURATIONS_S, float), rng, scale
    )
    return SamplePet(frames.astype(np.float32), pose @ grid, blurred)


def pet_sidecar() -> dict:
    """The BIDS PET sidecar of the sample's acquisition (decay-corrected to injection)."""
    return {
        "Manufacturer": "bids_dl simulation",
        "ManufacturersModelName": "bids_dl PET simulator",
        "BodyPart": "Brain",
        "Units": "Bq/mL",
        "TracerName": TRACER,
        "TracerRadionuclide": "F18",
        "InjectedRadioactivity": INJECTED_MBQ,
        "InjectedRadioactivityUnits": "MBq",
        "InjectedMass": "n/a",
        "InjectedMassUnits": "n/a",
        "SpecificRadioactivity": "n/a",
        "SpecificRadioactivityUnits": "n/a",
        "ModeOfAdministration": "bolus",
        "TimeZero": "10:00:00",
        "ScanStart": 0,
        "InjectionStart": 0,
        "FrameTimesStart": list(FRAME_STARTS_S),
        "FrameDuration": list(FRAME_DURATIONS_S),
        "AcquisitionMode": "list mode",
        "ImageDecayCorrected": True,
        "ImageDecayCorrectionTime": 0,
        "ReconMethodName": "simulated (Gaussian blur of the true uptake)",
        "ReconMethodParameterLabels": ["none"],
        "ReconMethodParameterUnits": ["none"],
        "ReconMethodParameterValues": [0],
        "ReconFilterType": "Gaussian",
        "ReconFilterSize": SCANNER_FWHM_MM,
        "AttenuationCorrection": "none (simulated)",
    }


def write_sample_pet(output_dir: Path, truth_dir: Path, label: str, pet: SamplePet) -> None:
    """Write ``sub-<label>/pet`` (frames and sidecar) and the true SUVR in the truth folder."""
    prefix = f"sub-{label}_trc-{TRACER}"
    image = nb.Nifti1Image(pet.frames, pet.affine)
    image.header.set_xyzt_units("mm", "sec")
    write_nifti_atomic(image, output_dir / f"sub-{label}" / "pet" / f"{prefix}_pet.nii.gz")
    write_json_atomic(pet_sidecar(), output_dir / f"sub-{label}" / "pet" / f"{prefix}_pet.json")
    truth = truth_dir / f"sub-{label}" / "pet"
    write_nifti_atomic(
        nb.Nifti1Image(pet.suvr, pet.affine), truth / f"{prefix}_desc-truth_pet.nii.gz"
    )
    write_json_atomic(
        {"Description": "true SUVR of the simulated PET (reference: cerebellar grey matter), "
         "blurred to the scanner's resolution", "Units": "unitless",
         "Sources": [f"bids:raw:sub-{label}/pet/{prefix}_pet.nii.gz"]},
        truth / f"{prefix}_desc-truth_pet.json",
    )  # fmt: skip
