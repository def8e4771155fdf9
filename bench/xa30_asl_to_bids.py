"""Write the shared real Siemens XA30 2D PCASL series and the same subject's T1w as a BIDS
dataset (``sub-xa30``), after checking the facts its sidecar does not say, then run the BIDS
validator on it.

    python bench/xa30_asl_to_bids.py ../shared/data OUT_DIR

The images are copied into OUT_DIR (the ASL image unchanged); ``sub-xa30_asl.json`` is the
scanner's sidecar plus the BIDS ASL fields that dcm2niix v1.0.20220720 did not write, and
``sub-xa30_aslcontext.tsv`` says which volume is what. Checked on the image before writing:
7 volumes; volume 0 reads higher than the rest (an M0-like reference, ``m0scan``); then three
pairs whose first volume reads lower (label first), which the scanner's own subtraction
(``xa30_scanner_PWI``) confirms by correlating with control minus label.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np

SUBJECT = "sub-xa30"
CONTEXT = ("m0scan", "label", "control", "label", "control", "label", "control")
#: BIDS ASL fields dcm2niix did not write. Background suppression: neither the sidecar nor
#: ../shared/data/README.md says; the controls read ~94 % of the M0 volume (checked below),
#: which suppressed background would bring far lower, so it is taken as off.
ADDED_FIELDS = {
    "M0Type": "Included",
    "BackgroundSuppression": False,
    "PostLabelingDelay": 1.8,
    "LabelingDuration": 1.8,
    "TotalAcquiredPairs": 3,
}
#: dcm2niix's duplicate of PostLabelingDelay under a non-BIDS name
DROPPED_FIELDS = ("PostLabelDelay",)
#: a control darker than this fraction of the M0 volume would mean background suppression
MIN_CONTROL_TO_M0 = 0.8
DESCRIPTION = {
    "Name": "XA30 real scans: 2D PCASL and T1w",
    "BIDSVersion": "1.10.0",
    "DatasetType": "raw",
    "License": "BSD-2-Clause",
    "ReferencesAndLinks": ["https://github.com/neurolabusc/dcm_qa_xa30"],
}


def brain_means(data: np.ndarray) -> np.ndarray:
    """Each volume's mean over the brain (voxels of the mean image above 30 % of its 99th
    percentile)."""
    mean = data.mean(axis=3)
    brain = mean > 0.3 * np.percentile(mean, 99)
    return data[brain].mean(axis=0)


def check_volumes(data: np.ndarray, scanner_pwi: np.ndarray) -> dict:
    """The facts of the README that the sidecar does not hold, checked on the image;
    ValueError when one does not hold."""
    if data.ndim != 4 or data.shape[3] != len(CONTEXT):
        raise ValueError(f"expected {len(CONTEXT)} volumes, found shape {data.shape}")
    means = brain_means(data)
    if not all(means[0] > means[1:]):
        raise ValueError(f"volume 0 is not the brightest (brain means {means.round(1)})")
    labels, controls = data[..., 1::2], data[..., 2::2]
    pair_differences = means[2::2] - means[1::2]
    if not all(pair_differences > 0):
        raise ValueError(f"the first volume of a pair is not the lower one: {pair_differences}")
    difference = (controls - labels).mean(axis=3)
    brain = data.mean(axis=3) > 0.3 * np.percentile(data.mean(axis=3), 99)
    correlation = float(np.corrcoef(difference[brain], scanner_pwi[brain])[0, 1])
    if correlation < 0.5:
        raise ValueError(f"control - label correlates {correlation:.2f} with the scanner's PWI")
    control_to_m0 = float(means[2::2].mean() / means[0])
    if control_to_m0 < MIN_CONTROL_TO_M0:
        raise ValueError(f"controls read {control_to_m0:.2f} of M0: background suppression?")
    return {
        "brain means": [round(float(m), 1) for m in means],
        "control - label per pair": [round(float(d), 2) for d in pair_differences],
        "correlation with the scanner's PWI": round(correlation, 3),
        "control / M0": round(control_to_m0, 3),
    }


def asl_sidecar(scanner: dict) -> dict:
    """The scanner's sidecar, its non-BIDS duplicate dropped, the ASL fields added and
    RepetitionTimePreparation set to RepetitionTime (one TR for M0, labels and controls)."""
    sidecar = {k: v for k, v in scanner.items() if k not in DROPPED_FIELDS}
    for key in ("ArterialSpinLabelingType", "MagneticFieldStrength", "MRAcquisitionType",
                "SliceTiming", "RepetitionTime"):  # fmt: skip
        if key not in sidecar:
            raise ValueError(f"the scanner's sidecar lacks {key}")
    for key, value in ADDED_FIELDS.items():
        if key in scanner and scanner[key] != value:
            raise ValueError(f"the scanner's sidecar says {key} {scanner[key]!r}, not {value!r}")
    sidecar.update(ADDED_FIELDS)
    sidecar["RepetitionTimePreparation"] = sidecar["RepetitionTime"]
    return sidecar


def write_xa30_asl_dataset(shared_data: Path, out_dir: Path) -> Path:
    """Write the BIDS dataset into ``out_dir`` (checked first: ValueError if a fact does not
    hold) and return ``out_dir``."""
    source = shared_data / "asl" / "xa30_pcasl"
    image = nb.load(source / "xa30_asl.nii.gz")
    pwi = np.asanyarray(nb.load(source / "xa30_scanner_PWI.nii.gz").dataobj, dtype=np.float64)
    facts = check_volumes(np.asanyarray(image.dataobj, dtype=np.float64), pwi)
    for key, value in facts.items():
        print(f"{key}: {value}")
    sidecar = asl_sidecar(json.loads((source / "xa30_asl.json").read_text(encoding="utf-8")))
    anat, perf = out_dir / SUBJECT / "anat", out_dir / SUBJECT / "perf"
    anat.mkdir(parents=True, exist_ok=True)
    perf.mkdir(parents=True, exist_ok=True)
    for extension in ("nii.gz", "json"):
        shutil.copyfile(shared_data / f"xa30_T1w/xa30_T1w.{extension}",
                        anat / f"{SUBJECT}_T1w.{extension}")  # fmt: skip
    shutil.copyfile(source / "xa30_asl.nii.gz", perf / f"{SUBJECT}_asl.nii.gz")
    (perf / f"{SUBJECT}_asl.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    (perf / f"{SUBJECT}_aslcontext.tsv").write_text("\n".join(["volume_type", *CONTEXT]) + "\n")
    (out_dir / "dataset_description.json").write_text(json.dumps(DESCRIPTION, indent=2) + "\n")
    (out_dir / "participants.tsv").write_text(f"participant_id\n{SUBJECT}\n")
    (out_dir / "README").write_text(
        "One adult brain on a Siemens Prisma (XA30): a 2D PCASL series (M0 volume, then three "
        "label/control pairs) and a T1w, from dcm_qa_xa30 (BSD-2-Clause).\n"
    )
    return out_dir


def validate(bids_dir: Path) -> tuple[int, list[str]]:
    """The BIDS validator's error count and warning codes (bids-validator-deno)."""
    from bids_dl.inputs import validator_command

    command = validator_command()
    if command is None:
        raise SystemExit("bids-validator-deno is not installed")
    result = subprocess.run([*command, "--format", "json", str(bids_dir)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    issues = json.loads(result.stdout).get("issues", {}).get("issues", [])
    for issue in issues:
        if issue.get("severity") == "error":
            print("error:", issue.get("code"), issue.get("location", ""), issue.get("subCode", ""))
    errors = sum(issue.get("severity") == "error" for issue in issues)
    return errors, sorted({i.get("code", "") for i in issues if i.get("severity") == "warning"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shared_data", type=Path, help="the ../shared/data folder")
    parser.add_argument("out_dir", type=Path, help="where the BIDS dataset is written")
    arguments = parser.parse_args()
    written = write_xa30_asl_dataset(arguments.shared_data, arguments.out_dir)
    errors, warnings = validate(written)
    print(f"bids-validator-deno: {errors} error(s), warnings: {', '.join(warnings) or 'none'}")
    raise SystemExit(1 if errors else 0)
