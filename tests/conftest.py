"""Shared fixtures: tiny BIDS datasets made on the fly, and one real end-to-end run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

BIN = Path(sys.executable).parent


def write_tiny_bids(root: Path, subjects=("01",), shape=(12, 14, 10)) -> Path:
    """A minimal BIDS dataset: one small random T1w per subject (for input checks, not runs)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    (root / "README").write_text("tiny test dataset\n")
    rng = np.random.default_rng(0)
    for label in subjects:
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        image = nb.Nifti1Image(rng.random(shape).astype(np.float32), np.diag([2, 2, 2, 1]))
        image.header.set_xyzt_units("mm")
        nb.save(image, anat / f"sub-{label}_T1w.nii.gz")
        (anat / f"sub-{label}_T1w.json").write_text(json.dumps({"RepetitionTime": 2.3}))
    return root


@pytest.fixture
def tiny_bids(tmp_path: Path) -> Path:
    return write_tiny_bids(tmp_path / "bids", subjects=("01", "02"))


@pytest.fixture(scope="session")
def sample_small(tmp_path_factory) -> Path:
    """The real sample dataset at 2 mm, two subjects."""
    from bids_dl.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("sample") / "bids"
    write_sample_dataset(root, n_subjects=2, voxel_mm=2.0, seed=7)
    return root


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``bids_dl`` command as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(BIN / "bids_dl"), *args], capture_output=True, text=True, cwd=cwd, env=env, check=False
    )


@pytest.fixture(scope="session")
def smoke_run(sample_small: Path, tmp_path_factory) -> dict:
    """participant then group level on the small sample, through the real CLI (MultiProc)."""
    base = tmp_path_factory.mktemp("smoke")
    output, work = base / "out", base / "work"
    input_before = tree_digest(sample_small)
    participant = run_cli(
        str(sample_small), str(output), "participant", "-w", str(work), "--nprocs", "2", "--sloppy"
    )
    group = run_cli(str(sample_small), str(output), "group")
    return {
        "bids": sample_small,
        "output": output,
        "work": work,
        "input_before": input_before,
        "participant": participant,
        "group": group,
    }


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (to prove a folder was not modified)."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
