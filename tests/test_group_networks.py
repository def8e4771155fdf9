"""Group networks on a tiny fake derivatives folder: three participants sharing planted
networks, written the way the participant level writes its template-space runs."""

from __future__ import annotations

import json
import logging
import shutil

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_dl.group_networks import NetworkOptions, find_runs, network_summary, write_network_outputs
from bids_dl.models.card import ModelCard, write_card
from tests.test_connectivity import (
    DUMMIES,
    PREFIX,
    confounds_table,
    interior_mask,
    write_run,
)

#: a grid large enough for the 4 mm blocks the decompositions run on and their smoothing
SHAPE = (24, 24, 20)
#: centres (voxels) of the planted networks: each a pair of blobs, as a bilateral network
NETWORK_CENTRES = (((6, 6, 4), (17, 17, 15)), ((17, 6, 4), (6, 17, 15)), ((6, 17, 4), (17, 6, 15)))
BLOB_SD = 2.5
#: volumes per run: the 24 motion, 2 tissue and cosine regressors take ~30 degrees of freedom
N_VOLUMES = 60
#: the deep model made quick: fewer steps than its defaults, K given
QUICK_SETTINGS = {"steps": 150, "subject_components": 8}
#: the grid is 48 mm wide: the shipped card's 6 mm kernel on its 4 mm blocks blurs the blobs
#: together (matched correlation 0.15; 0.85 at 2 mm)
TEST_SMOOTHING_MM = 2.0


def planted_maps() -> np.ndarray:
    """(K, X, Y, Z): each network two Gaussian blobs."""
    grid = np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing="ij"), axis=-1)
    maps = [
        sum(np.exp(-((grid - c) ** 2).sum(-1) / (2 * BLOB_SD**2)) for c in centres)
        for centres in NETWORK_CENTRES
    ]
    return np.stack(maps)


def write_subject(root, label: str, rng: np.random.Generator, task: str = "rest") -> None:
    """One run: planted networks with their own time courses, motion, noise, two dummies."""
    maps = planted_maps()
    courses = rng.normal(size=(len(maps), N_VOLUMES)) * 3
    confounds = confounds_table(rng, N_VOLUMES)
    data = np.tensordot(maps, courses, axes=(0, 0)) + rng.normal(size=(*SHAPE, N_VOLUMES))
    data += 100 + 4 * confounds["rot_x"].to_numpy()
    data[..., :DUMMIES] += 40
    write_run(
        root / f"sub-{label}" / "func",
        f"sub-{label}_task-{task}",
        data,
        interior_mask(SHAPE),
        confounds,
    )


def write_bundle(folder) -> str:
    folder.mkdir()
    card = ModelCard(
        name="networks-test",
        version="0.0.1",
        task="fmri-networks",
        architecture={"name": "SparseAutoencoder", "args": QUICK_SETTINGS},
        inputs={"smoothing_fwhm_mm": TEST_SMOOTHING_MM},
        outputs={"channels": ["network maps"]},
    )
    write_card(folder, card)
    return str(folder)


@pytest.fixture(scope="module")
def derivatives(tmp_path_factory):
    root = tmp_path_factory.mktemp("derivatives")
    rng = np.random.default_rng(0)
    for label in ("01", "02", "03"):
        write_subject(root, label, rng)
    write_subject(root, "01", rng, task="alone")
    return root


@pytest.fixture(scope="module")
def written(derivatives, tmp_path_factory):
    # nilearn's default sparsity suits whole brains, not 800 voxels
    patch = pytest.MonkeyPatch()
    patch.setattr("bids_dl.group_networks.DICTLEARNING_ALPHA", 1.0)
    bundle = write_bundle(tmp_path_factory.mktemp("bundle") / "networks")
    options = NetworkOptions(["deep", "canica", "dictlearning"], bundle=bundle, n_components=3)
    yield write_network_outputs(derivatives, None, options)
    patch.undo()


def test_find_runs_groups_the_runs_by_task(derivatives):
    runs = find_runs(derivatives, ["sub-01", "02"])
    assert sorted(runs) == ["alone", "rest"]
    assert [r.participant for r in runs["rest"]] == ["01", "02"]
    assert runs["rest"][0].repetition_time == 2.0
    assert runs["rest"][0].confounds.name == "sub-01_task-rest_desc-confounds_timeseries.tsv"


@pytest.mark.parametrize("method", ["deep", "canica", "dictlearning"])
def test_group_maps_recover_the_planted_networks(derivatives, written, method):
    from bids_dl.models.network_extraction import match_maps

    group = derivatives / "group" / "func" / f"task-rest_{PREFIX}_desc-{method}_components"
    image = nb.load(group.with_suffix(".nii.gz"))
    assert image.shape == (*SHAPE, 3)
    inside = interior_mask(SHAPE)
    estimated = image.get_fdata()[inside].T
    truth = planted_maps()[:, inside]
    assert match_maps(estimated, truth).min() > 0.5
    sidecar = json.loads(group.with_suffix(".json").read_text())
    assert sidecar["NumberOfComponents"] == 3 and sidecar["NumberOfParticipants"] == 3
    assert len(sidecar["Sources"]) == 3 and sidecar["Denoising"]["Name"] == "simple"


@pytest.mark.parametrize("method", ["deep", "canica", "dictlearning"])
def test_each_run_gets_maps_time_courses_and_a_connectome(derivatives, written, method):
    prefix = derivatives / "sub-02" / "func" / f"sub-02_task-rest_{PREFIX}"
    maps = nb.load(f"{prefix}_desc-{method}_components.nii.gz")
    assert maps.shape == (*SHAPE, 3)
    courses = pd.read_csv(f"{prefix}_desc-{method}_timeseries.tsv", sep="\t", na_values="n/a")
    assert list(courses.columns) == ["component_00", "component_01", "component_02"]
    assert len(courses) == N_VOLUMES and courses.iloc[:DUMMIES].isna().all().all()
    relmat = pd.read_csv(f"{prefix}_seg-{method}_meas-PearsonCorrelation_relmat.tsv", sep="\t")
    np.testing.assert_allclose(relmat.to_numpy(), relmat.to_numpy().T, atol=1e-6)


def test_a_task_with_one_run_is_skipped_with_a_warning(derivatives, caplog):
    options = NetworkOptions(["canica"], n_components=2)
    with caplog.at_level(logging.WARNING, logger="bids_dl.group"):
        write_network_outputs(derivatives, ["01"], options)
    assert "Task alone: 1 preprocessed run(s)" in caplog.text
    assert not list((derivatives / "group" / "func").glob("task-alone_*"))


def test_the_summary_reads_the_group_sidecars(derivatives, written):
    summary = network_summary(derivatives)["rest"]
    assert set(summary) == {"deep", "canica", "dictlearning"}
    assert summary["deep"]["n_components"] == 3 and summary["deep"]["stability"] is not None
    assert summary["canica"]["seconds"] >= 0 and summary["canica"]["components"].is_file()


def test_unknown_methods_are_refused():
    with pytest.raises(ValueError, match="melodic"):
        NetworkOptions(["melodic"])


def write_measures(root, labels) -> None:
    for label in labels:
        folder = root / f"sub-{label}" / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame({"participant_id": [f"sub-{label}"], "brain_mask_mm3": [1e6]})
        table.to_csv(folder / f"sub-{label}_desc-anat_measures.tsv", sep="\t", index=False)


def test_the_group_report_shows_the_networks(derivatives, tmp_path):
    from bids_dl.group import write_group_outputs

    root = shutil.copytree(derivatives, tmp_path / "derivatives")
    shutil.rmtree(root / "group", ignore_errors=True)
    write_measures(root, ["01", "02", "03"])

    write_group_outputs(root, None, NetworkOptions(["canica"], n_components=3))

    html = (root / "group.html").read_text()
    assert "Functional networks" in html and 'data-images-total="3"' in html
    assert (root / "figures" / "task-rest_desc-canica_components.png").is_file()
    assert (root / "figures" / "task-rest_relmat.png").is_file()


def test_no_bold_runs_no_network_section(tmp_path):
    from bids_dl.group import write_group_outputs

    write_measures(tmp_path, ["01"])
    write_group_outputs(tmp_path, None, NetworkOptions(["canica"]))
    assert "Functional networks" not in (tmp_path / "group.html").read_text()


def test_find_runs_reads_sessions_and_runs(tmp_path):
    rng = np.random.default_rng(5)
    for name in ("sub-04_ses-2_task-rest_run-1", "sub-04_ses-2_task-rest_run-2"):
        data = rng.normal(size=(*SHAPE, 20))
        write_run(
            tmp_path / "sub-04" / "ses-2" / "func",
            name,
            data,
            interior_mask(SHAPE),
            confounds_table(rng, 20),
        )
    runs = find_runs(tmp_path)["rest"]
    assert [r.prefix for r in runs] == [f"sub-04_ses-2_task-rest_run-{i}_{PREFIX}" for i in (1, 2)]
    assert runs[1].confounds.name == "sub-04_ses-2_task-rest_run-2_desc-confounds_timeseries.tsv"
