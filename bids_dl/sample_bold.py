"""The sample dataset's BOLD runs: resting-state runs simulated by the bids_dl network
simulator (``models.bold_simulation``) on a subject's brain placed with its pose, with an
EPI-like tissue contrast, and the subject's true network maps and time courses for scoring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from bids_dl.derivatives import write_json_atomic, write_nifti_atomic, write_text_atomic

#: the sample's protocol: a short resting-state run at 3 mm, no slice timing simulated
BOLD_TASK = "rest"
BOLD_VOLUMES = 60
BOLD_REPETITION_TIME_S = 2.0
#: the template's 1 mm tissue maps are subsampled by this (3 mm voxels)
TEMPLATE_STEP = 3
#: voxels of background kept around the brain (the field of view of a BOLD run is tight)
MARGIN_VOXELS = 3
#: EPI intensity of each tissue relative to grey matter (T2*-weighted: CSF brightest, white
#: matter darkest), so that the run has the contrast a BOLD reference registers by
EPI_CONTRAST = {"csf": 1.5, "gm": 1.0, "wm": 0.75}


@dataclass(frozen=True)
class SampleBold:
    """A simulated run and its truth."""

    data: np.ndarray
    affine: np.ndarray
    maps: np.ndarray
    time_courses: np.ndarray


def simulate_sample_bold(
    tissues: np.ndarray, template_affine: np.ndarray, pose: np.ndarray, rng: np.random.Generator
) -> SampleBold:
    """A resting-state run of the head whose template-space tissue fractions (CSF, GM, WM)
    sit at ``pose``: the subject's jittered networks, the simulator's realistic noise level."""
    from bids_dl.models.bold_simulation import (
        BoldSimulation,
        simulate_run,
        subject_network_maps,
    )

    step = tissues[:, ::TEMPLATE_STEP, ::TEMPLATE_STEP, ::TEMPLATE_STEP]
    inside = np.argwhere(step.sum(0) > 0.5)
    start = np.maximum(inside.min(0) - MARGIN_VOXELS, 0)
    stop = inside.max(0) + MARGIN_VOXELS + 1
    csf, gm, wm = step[:, start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    brain = (csf + gm + wm) > 0.5
    grid = template_affine @ np.diag([TEMPLATE_STEP] * 3 + [1])
    grid[:3, 3] = nb.affines.apply_affine(grid, start)
    settings = BoldSimulation(n_volumes=BOLD_VOLUMES, repetition_time=BOLD_REPETITION_TIME_S)
    maps = subject_network_maps(brain, grid, settings, rng)
    run = simulate_run(maps, brain, settings, rng, grid)
    contrast = EPI_CONTRAST["csf"] * csf + EPI_CONTRAST["gm"] * gm + EPI_CONTRAST["wm"] * wm
    contrast = np.where(brain, contrast / np.maximum(csf + gm + wm, 1e-3), 1.0)
    data = np.clip(run.data * contrast[..., None], 0, None).astype(np.float32)
    return SampleBold(data, pose @ grid, maps.astype(np.float32), run.time_courses)


def bold_sidecar() -> dict:
    return {
        "TaskName": BOLD_TASK,
        "RepetitionTime": BOLD_REPETITION_TIME_S,
        "Manufacturer": "bids_dl simulation",
        "MagneticFieldStrength": 3,
        "EchoTime": 0.03,
        "FlipAngle": 77,
    }


def write_sample_bold(output_dir: Path, truth_dir: Path, label: str, run: SampleBold) -> None:
    """Write ``sub-<label>/func`` (run and sidecar) and the true maps and time courses in the
    truth folder."""
    prefix = f"sub-{label}_task-{BOLD_TASK}"
    image = nb.Nifti1Image(run.data, run.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((*image.header.get_zooms()[:3], BOLD_REPETITION_TIME_S))
    folder = output_dir / f"sub-{label}" / "func"
    write_nifti_atomic(image, folder / f"{prefix}_bold.nii.gz")
    write_json_atomic(bold_sidecar(), folder / f"{prefix}_bold.json")
    truth = truth_dir / f"sub-{label}" / "func"
    maps = nb.Nifti1Image(np.moveaxis(run.maps, 0, -1), run.affine)
    write_nifti_atomic(maps, truth / f"{prefix}_desc-truth_components.nii.gz")
    source = [f"bids:raw:sub-{label}/func/{prefix}_bold.nii.gz"]
    write_json_atomic(
        {"Description": "true network maps of the simulated run (one per volume)",
         "Sources": source},
        truth / f"{prefix}_desc-truth_components.json",
    )  # fmt: skip
    columns = [f"network_{k:02d}" for k in range(run.time_courses.shape[1])]
    rows = ["\t".join(columns)] + ["\t".join(f"{v:.6g}" for v in row) for row in run.time_courses]
    write_text_atomic("\n".join(rows) + "\n", truth / f"{prefix}_desc-truth_timeseries.tsv")
