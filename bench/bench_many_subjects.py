"""Time from ``bids_dl`` start to the first node submitted, on a 200-subject dataset.

The dataset holds valid placeholder images (4^3 voxels: nothing to compute, but every
header and data check passes), one T1w and one FLAIR per subject, so what is timed is
what a large study pays before any work: the validator, pybids indexing (cold, then read
from the database cache in the work dir), the input checks and building the graph.

    python bench/bench_many_subjects.py [--subjects 200] [--keep DIR]

Each run is stopped as soon as nipype starts its first node.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np

BIN = Path(sys.executable).parent
#: A line nipype prints (with ``-v``) when MultiProc sends out its first jobs.
FIRST_SUBMISSION = "[MultiProc] Running 0 tasks"
TIMEOUT_S = 1800


def write_placeholder_dataset(root: Path, n_subjects: int) -> Path:
    """A valid BIDS dataset of ``n_subjects`` with tiny T1w and FLAIR images."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "placeholders", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (root / "README").write_text("Placeholder images for timing bids_dl's start-up.\n")
    image = nb.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4))
    image.header.set_xyzt_units("mm")
    rows = ["participant_id"]
    for index in range(1, n_subjects + 1):
        label = f"{index:03d}"
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        for suffix in ("T1w", "FLAIR"):
            nb.save(image, anat / f"sub-{label}_{suffix}.nii.gz")
            (anat / f"sub-{label}_{suffix}.json").write_text(json.dumps({"RepetitionTime": 2.0}))
        rows.append(f"sub-{label}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def time_to_first_node(bids: Path, output: Path, work: Path, *extra: str) -> float:
    """Seconds from starting ``bids_dl participant`` to its first submitted node."""
    command = [str(BIN / "bids_dl"), str(bids), str(output), "participant", "-w", str(work)]
    command += ["--nprocs", "2", "-v", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        for line in process.stdout:
            if FIRST_SUBMISSION in line:
                return time.perf_counter() - start
            if time.perf_counter() - start > TIMEOUT_S:
                break
        raise RuntimeError(f"no node was submitted; exit code {process.wait()}")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="folder to keep the dataset and work dirs in")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="bids_dl_many_"))
    bids = write_placeholder_dataset(base / "bids", args.subjects)
    work = base / "work"
    print(f"{args.subjects} subjects (T1w + FLAIR placeholders) in {bids}")
    runs = (
        ("validator on, index cold", work, ()),
        ("validator on, index cached", work, ()),
        ("validator skipped, index cached", work, ("--skip-bids-validation",)),
        ("validator skipped, index cold", base / "work_cold", ("--skip-bids-validation",)),
    )
    for name, work_dir, extra in runs:
        seconds = time_to_first_node(bids, base / "out", work_dir, *extra)
        print(f"{name:34s} {seconds:6.1f} s to the first node")
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
