"""Run the shipped models on CPU and, where CUDA exists, on the GPU; compare and time them.

Each model runs through the same function its pipeline node calls, twice per device (the
first call includes loading and, on CUDA, warming up; the second is timed). Labels of every
device are compared with the first CPU run (voxels that differ, Dice per label), and the
second CPU run with the first (CPU determinism). Inputs are a sample dataset's tumour subject
(T1w, FLAIR, ce-T1w), written first if ``--bids`` is not given.

    python bench/gpu_check.py [--bids demo/sample --subject 04] [--threads 2] [--models ...]
        [--cpu-runs 1]   (a GPU lease: one CPU reference run per model, no CPU timing)

Exit status 1 if a device's labels disagree with the CPU's beyond rounding (more than
``--tolerance`` of the foreground voxels).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import torch

from bids_dl.models.registry import shipped_bundles
from bids_dl.workflows.interfaces.deep_learning import (
    model_brain_mask,
    model_lesions,
    model_structures,
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def subject_files(bids: Path, subject: str) -> dict[str, Path]:
    anat = bids / f"sub-{subject}" / "anat"
    files = {
        "T1w": anat / f"sub-{subject}_T1w.nii.gz",
        "FLAIR": anat / f"sub-{subject}_FLAIR.nii.gz",
        "T1ce": next(anat.glob(f"sub-{subject}_ce-*_T1w.nii.gz"), None),
    }
    missing = [name for name, path in files.items() if path is None or not path.exists()]
    if missing:
        sys.exit(f"gpu_check: sub-{subject} has no {', '.join(missing)} image in {anat}")
    return files


def run_model(
    task: str, files: dict[str, Path], mask: Path | None, out: Path, device: str, threads: int
) -> tuple[np.ndarray, float]:
    """Labels of one model on one device, and the seconds the call took."""
    bundle = str(shipped_bundles()[task])
    start = time.perf_counter()
    if task == "brain_mask":
        model_brain_mask(str(files["T1w"]), bundle, str(out), device, threads)
    elif task == "structures":  # writes a folder; its structure labels are compared
        out.mkdir()
        model_structures(str(files["T1w"]), str(mask), bundle, str(out), device, threads)
        out = out / "aseg.nii.gz"
    else:
        contrasts = {"FLAIR": str(files["FLAIR"]), "T1ce": str(files["T1ce"]), "T2w": None}
        model_lesions(
            task, bundle, str(files["T1w"]), str(mask), str(out), contrasts, device, threads
        )
    if device == "cuda":
        torch.cuda.synchronize()
    return np.asarray(nb.load(out).dataobj), time.perf_counter() - start


def compare(reference: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """Fraction of foreground voxels that differ, and Dice per label."""
    foreground = max(int(((reference > 0) | (labels > 0)).sum()), 1)
    differ = float((reference != labels).sum()) / foreground
    values = sorted((set(np.unique(reference)) | set(np.unique(labels))) - {0})
    dices = " ".join(f"{int(v)}:{dice(reference == v, labels == v):.4f}" for v in values)
    return differ, dices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, help="sample dataset (default: write a small one)")
    parser.add_argument("--subject", default="04", help="a subject with T1w, FLAIR and ce-T1w")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument(
        "--cpu-runs", type=int, choices=(1, 2), default=2, help="2 also checks CPU determinism"
    )
    parser.add_argument(
        "--models",
        default="brain_mask,structures,tumor,wmh",
        help="comma-separated shipped models",
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bids_dl_gpu_check_"))
    bids = args.bids
    if bids is None:
        from bids_dl.sample import write_sample_dataset

        bids = scratch / "bids"
        write_sample_dataset(bids, n_subjects=1, voxel_mm=2.0, lesions=True)
        args.subject = "02"  # the tumour subject follows the healthy one
    files = subject_files(bids, args.subject)
    devices = ["cpu"] * args.cpu_runs + (["cuda", "cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"sub-{args.subject} {nb.load(files['T1w']).shape}; CUDA device: {gpu}; "
        f"CPU threads {args.threads}"
    )
    print("model\tdevice\trun\tseconds\tvoxels_differing_vs_cpu\tdice_per_label_vs_cpu")
    status = 0
    mask = None
    wanted = args.models.split(",")
    if "brain_mask" not in wanted:
        sys.exit("gpu_check: the other models need the brain_mask model's mask; include it")
    for task in [t for t in wanted if t in shipped_bundles()]:
        reference = None
        for run, device in enumerate(devices):
            out = scratch / f"{task}_{device}_{run}.nii.gz"
            labels, seconds = run_model(task, files, mask, out, device, args.threads)
            if reference is None:
                reference = labels
                if task == "brain_mask":
                    mask = out
            differ, dices = compare(reference, labels)
            repeat = run + 1 if device == "cpu" else run - args.cpu_runs + 1
            print(f"{task}\t{device}\t{repeat}\t{seconds:.2f}\t{differ:.5f}\t{dices}")
            if differ > args.tolerance:
                status = 1
    print("labels agree within tolerance" if status == 0 else "labels DISAGREE beyond tolerance")
    return status


if __name__ == "__main__":
    sys.exit(main())
