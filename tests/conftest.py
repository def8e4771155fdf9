"""Shared fixtures: tiny BIDS datasets made on the fly, one real end-to-end run, and the
comparison of two runs' derivatives."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

BIN = Path(sys.executable).parent
#: The options of every end-to-end run that is compared with :func:`smoke_run`: one thread
#: per node and a fixed ANTs seed make registration reproducible (Atropos is not, even so:
#: see :func:`assert_same_derivatives`).
#: MP-PCA is left out (a minute per sample series; ``tests/test_dwi.py`` tests it alone).
SMOKE_OPTIONS = ("--nprocs", "2", "--omp-nthreads", "1", "--random-seed", "42", "--sloppy",
                 "--dwi-denoise", "none")  # fmt: skip


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
    """The sample dataset at 2 mm: a healthy subject (01), one with a simulated glioma (02)
    and one with simulated white-matter hyperintensities (03)."""
    from bids_dl.sample import write_sample_dataset

    root = tmp_path_factory.mktemp("sample") / "bids"
    write_sample_dataset(root, n_subjects=1, voxel_mm=2.0, seed=3, lesions=True)
    return root


def copy_as_brats(bids: Path, source: str, target: str) -> None:
    """A BraTS-style participant: ``source``'s images (ce-T1w, FLAIR, T2w) without its T1w,
    skull-stripped with the true brain mask and z-scored inside it, as the BraTS cases are."""
    shutil.copytree(bids / f"sub-{source}", bids / f"sub-{target}")
    truth = bids / "derivatives" / "sample-truth" / f"sub-{source}" / "anat"
    brain = nb.load(truth / f"sub-{source}_desc-brain_mask.nii.gz").get_fdata() > 0
    for path in sorted((bids / f"sub-{target}").rglob("*.*")):
        renamed = path.with_name(path.name.replace(f"sub-{source}", f"sub-{target}"))
        if renamed.name.startswith(f"sub-{target}_T1w."):
            path.unlink()
            continue
        path.rename(renamed)
        if renamed.name.endswith(".nii.gz"):
            image = nb.load(renamed)
            data = image.get_fdata() * brain
            zscored = (data - data[brain].mean()) / data[brain].std()
            nb.save(nb.Nifti1Image(zscored.astype(np.float32), image.affine), renamed)
    table = bids / "participants.tsv"
    rows = table.read_text().splitlines()
    copied = next(r for r in rows if r.startswith(f"sub-{source}\t"))
    table.write_text("\n".join([*rows, copied.replace(source, target, 1)]) + "\n")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``bids_dl`` command as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(BIN / "bids_dl"), *args], capture_output=True, text=True, cwd=cwd, env=env, check=False
    )


@pytest.fixture(scope="session")
def smoke_run(sample_small: Path, tmp_path_factory) -> dict:
    """participant then group level through the real CLI (MultiProc), with the shipped
    models, on the sample plus sub-04: sub-02 as a BraTS case (``copy_as_brats``). The one
    end-to-end run that the smoke, lesion, interrupt and Slurm tests share."""
    base = tmp_path_factory.mktemp("smoke")
    bids, output, work = base / "bids", base / "out", base / "work"
    shutil.copytree(sample_small, bids)
    copy_as_brats(bids, "02", "04")
    input_before = tree_digest(bids)
    participant = run_cli(str(bids), str(output), "participant", "-w", str(work), *SMOKE_OPTIONS)
    group = run_cli(str(bids), str(output), "group")
    return {
        "bids": bids,
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


#: derivatives folders, figure endings and measure prefixes of the diffusion, ASL, BOLD and
#: PET analyses
MODALITY_FOLDERS = ("dwi/", "perf/", "func/", "pet/")
MODALITY_FIGURES = ("_dwi.png", "_asl.png", "_bold.png", "_pet.png")
MODALITY_MEASURES = ("dwi_", "asl_", "pet_")


def subject_derivatives(output: Path, subject: str, modalities: bool = True) -> dict[str, Path]:
    """A subject's derivative files by relative path (logs excluded: they name the run;
    diffusion, perfusion, BOLD and PET outputs and figures too unless ``modalities``)."""
    folder = output / f"sub-{subject}"
    files = {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "log" not in path.relative_to(folder).parts
    }
    return {
        name: path
        for name, path in files.items()
        if modalities or not (name.startswith(MODALITY_FOLDERS) or name.endswith(MODALITY_FIGURES))
    }


#: Atropos outputs, which differ a little between runs even with one thread and a fixed
#: seed (measured between two MultiProc runs: GM/WM probabilities differ by up to 0.06 in
#: ~5 % of the voxels, labels in ~1e-5 of them).
TISSUE_OUTPUTS = ("_probseg.nii.gz", "_dseg.nii.gz", "_measures.tsv")


def assert_same_derivatives(
    output: Path, reference: Path, subject: str, modalities: bool = True
) -> None:
    """The same files, the same images within float tolerance (Atropos' within its own
    variation), the same JSON and tables; figures and HDF5 transforms written, non-empty.
    Without ``modalities``, ``output`` comes from a run without the diffusion and ASL
    analyses: the reference's diffusion and perfusion outputs and measures are left out."""
    ours = subject_derivatives(output, subject, modalities)
    theirs = subject_derivatives(reference, subject, modalities)
    assert sorted(ours) == sorted(theirs)
    for name, path in ours.items():
        tissue = name.endswith(TISSUE_OUTPUTS)
        if name.endswith(".nii.gz"):
            _assert_close_image(path, theirs[name], tissue)
        elif name.endswith(".tsv") and tissue:
            _assert_close_table(path, theirs[name], modalities)
        elif name.endswith((".json", ".tsv")):
            assert path.read_text() == theirs[name].read_text(), name
        else:  # figures, transforms (HDF5 metadata differ): written, non-empty
            assert path.stat().st_size > 0, name


def _assert_close_image(path: Path, reference: Path, tissue: bool) -> None:
    a, b = nb.load(path), nb.load(reference)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5, err_msg=path.name)
    x, y = np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)
    if not tissue:
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=path.name)
    elif "probseg" in path.name:
        assert np.abs(x - y).max() < 0.2 and np.mean(np.abs(x - y) > 1e-3) < 0.15, path.name
    else:  # labels
        assert np.mean(x != y) < 1e-3, path.name


def _assert_close_table(path: Path, reference: Path, modalities: bool = True) -> None:
    """Same columns and subjects (the reference's diffusion and perfusion columns dropped
    unless ``modalities``); numbers within 0.1 %."""
    ours, theirs = pd.read_csv(path, sep="\t"), pd.read_csv(reference, sep="\t")
    if not modalities:
        theirs = theirs.drop(columns=[c for c in theirs.columns if c.startswith(MODALITY_MEASURES)])
    assert list(ours.columns) == list(theirs.columns)
    numeric = ours.select_dtypes("number").columns
    np.testing.assert_allclose(ours[numeric], theirs[numeric], rtol=1e-3, err_msg=str(path))
    assert ours.drop(columns=numeric).equals(theirs.drop(columns=numeric))


#: the real data of ``../shared`` (absent on some machines: the tests that need it skip)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_real_xa30_dataset(root: Path) -> Path:
    """A BIDS dataset of the real Siemens XA30 subject: its T1w and PCASL series
    (``bench/xa30_asl_to_bids.py``), its 20-direction DWI (PA) and its BOLD run (the
    sidecar's TaskName added: dcm2niix did not write it)."""
    import importlib.util

    script = Path(__file__).parents[1] / "bench" / "xa30_asl_to_bids.py"
    spec = importlib.util.spec_from_file_location("xa30_asl_to_bids", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_xa30_asl_dataset(SHARED_DATA, root)
    (root / "sub-xa30" / "dwi").mkdir(parents=True)
    source = SHARED_DATA / "dwi/xa30_dir20_b2500_PA/xa30_dwi_PA"
    for extension in ("nii.gz", "json", "bval", "bvec"):
        shutil.copy(f"{source}.{extension}", root / f"sub-xa30/dwi/sub-xa30_dir-PA_dwi.{extension}")
    func = root / "sub-xa30" / "func"
    func.mkdir(parents=True)
    source = SHARED_DATA / "func/xa30_bold/xa30_bold"
    shutil.copy(f"{source}.nii.gz", func / "sub-xa30_task-fa_run-1_bold.nii.gz")
    sidecar = json.loads(Path(f"{source}.json").read_text(encoding="utf-8"))
    (func / "sub-xa30_task-fa_run-1_bold.json").write_text(
        json.dumps({**sidecar, "TaskName": "fa"})
    )
    return root


@pytest.fixture(scope="session")
def xa30_run(tmp_path_factory) -> dict:
    """The real XA30 subject (T1w, DWI, PCASL, BOLD) through the CLI, shared by the
    diffusion, ASL and BOLD tests; skipped without ``../shared/data``."""
    if not (SHARED_DATA / "asl").is_dir() or not (SHARED_DATA / "dwi").is_dir():
        pytest.skip("../shared/data is absent")
    base = tmp_path_factory.mktemp("xa30")
    bids = write_real_xa30_dataset(base / "bids")
    output = base / "out"
    result = run_cli(str(bids), str(output), "participant", "-w", str(base / "work"),
                     "--skip-bids-validation", *SMOKE_OPTIONS)  # fmt: skip
    return {"bids": bids, "output": output, "result": result}
