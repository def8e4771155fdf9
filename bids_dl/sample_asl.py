"""The sample dataset's ASL series: a PCASL acquisition simulated by the bids_dl ASL phantom
(``models.asl_phantom``) on a subject's tissue maps placed with its pose, with an M0 volume
first and four label/control pairs, and its true CBF for scoring."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nb
import numpy as np

from bids_dl.derivatives import write_json_atomic, write_nifti_atomic, write_text_atomic

if TYPE_CHECKING:
    from bids_dl.models.asl_phantom import AslCase

#: The sample's protocol: 2D PCASL, one delay, no background suppression, M0 in the series
ASL_PAIRS = 4
ASL_DELAY_S = 1.8
ASL_LABELING_DURATION_S = 1.8
ASL_SNR_PER_PAIR = 4.0
#: head motion between volumes (sd, mm and degrees): a still, cooperative participant
ASL_MOTION = 0.1
ASL_REPETITION_TIME_S = 4.0
#: the template's tissue maps are subsampled by this before the phantom reads them (the ASL
#: grid is 3.5 x 3.5 x 6 mm)
TEMPLATE_STEP = 2


def simulate_sample_asl(
    tissues: np.ndarray, template_affine: np.ndarray, pose: np.ndarray, rng: np.random.Generator
) -> AslCase:
    """A PCASL series of the head whose template-space tissue fractions (CSF, GM, WM) sit at
    ``pose``: the phantom with the sample's protocol fixed and everything else drawn."""
    from bids_dl.models.asl_phantom import AslSimulation, simulate_from_fractions

    csf, gm, wm = (t[::TEMPLATE_STEP, ::TEMPLATE_STEP, ::TEMPLATE_STEP] for t in tissues)
    zero = np.zeros_like(gm)
    fractions = np.stack([gm, zero, wm, csf, zero])  # cortex, deep GM, WM, CSF, other
    affine = pose @ template_affine @ np.diag([TEMPLATE_STEP] * 3 + [1])
    settings = AslSimulation(
        pairs=ASL_PAIRS,
        snr_range=(ASL_SNR_PER_PAIR, ASL_SNR_PER_PAIR),
        pcasl_probability=1.0,
        pld_range=(ASL_DELAY_S, ASL_DELAY_S),
        labeling_duration_range=(ASL_LABELING_DURATION_S, ASL_LABELING_DURATION_S),
        background_suppression_probability=0.0,
        in_plane_mm_range=(3.5, 3.5),
        slice_mm_range=(6.0, 6.0),
        slices_range=(16, 16),
        motion_mm=ASL_MOTION,
        motion_deg=ASL_MOTION,
    )
    return simulate_from_fractions(fractions, affine, rng, settings)


def asl_sidecar(case: AslCase) -> dict:
    """The BIDS sidecar of a simulated series: what the phantom drew, in BIDS fields."""
    protocol = case.protocol
    slice_times = protocol["slice_time"] * np.arange(case.series.shape[2])
    return {
        "Manufacturer": "bids_dl simulation",
        "MagneticFieldStrength": 3 if case.scheme.t1_blood > 1.5 else 1.5,
        "MRAcquisitionType": "2D",
        "EchoTime": 0.012,
        "FlipAngle": 90,
        "RepetitionTime": ASL_REPETITION_TIME_S,
        "RepetitionTimePreparation": ASL_REPETITION_TIME_S,
        "ArterialSpinLabelingType": "PCASL",
        "PCASLType": "balanced",
        "LabelingDuration": round(case.scheme.bolus_duration, 4),
        "PostLabelingDelay": round(protocol["first_delay"], 4),
        "BackgroundSuppression": False,
        "M0Type": "Included",
        "TotalAcquiredPairs": ASL_PAIRS,
        "VascularCrushing": False,
        "AcquisitionVoxelSize": [protocol["in_plane_mm"]] * 2 + [protocol["thickness_mm"]],
        "SliceTiming": [round(float(t), 5) for t in slice_times],
        "SliceEncodingDirection": "k",
    }


def write_sample_asl(output_dir: Path, truth_dir: Path, label: str, case: AslCase) -> None:
    """Write ``sub-<label>/perf`` (series with its M0 volume first, aslcontext, sidecar) and
    the true CBF and protocol in the truth folder."""
    prefix = f"sub-{label}"
    folder = output_dir / prefix / "perf"
    series = np.concatenate([case.m0[..., None], case.series], axis=-1).astype(np.float32)
    image = nb.Nifti1Image(series, case.affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((*image.header.get_zooms()[:3], ASL_REPETITION_TIME_S))
    write_nifti_atomic(image, folder / f"{prefix}_asl.nii.gz")
    context = ["m0scan", *case.context]
    write_text_atomic(
        "volume_type\n" + "\n".join(context) + "\n", folder / f"{prefix}_aslcontext.tsv"
    )
    write_json_atomic(asl_sidecar(case), folder / f"{prefix}_asl.json")
    truth = truth_dir / prefix / "perf"
    write_nifti_atomic(nb.Nifti1Image(case.cbf, case.affine), truth / f"{prefix}_cbf.nii.gz")
    write_json_atomic(
        {
            "Description": "true tissue CBF of the simulated series (partial-volume weighted)",
            "Units": "mL/100 g/min",
            "Sources": [f"bids:raw:{prefix}/perf/{prefix}_asl.nii.gz"],
            "SimulationParameters": case.protocol | {"snr_per_pair": case.snr},
        },
        truth / f"{prefix}_cbf.json",
    )
