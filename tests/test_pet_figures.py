"""PET report figures (SUVR over the T1w, measured or imputed; time-activity curves) and the
report's PET section with its synthetic-image warning."""

from __future__ import annotations

import json
import warnings

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from bids_dl.reports import pet_figures

#: A small T1w grid of 3 mm voxels, stored left-right reversed (LAS) as scanners often do
SHAPE, ZOOM = (20, 24, 20), 3.0


def _save(data: np.ndarray, path) -> str:
    nb.save(nb.Nifti1Image(np.ascontiguousarray(data[::-1]), np.diag([-ZOOM, ZOOM, ZOOM, 1])), path)
    return str(path)


def _read_png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 0
    pixels = mpimg.imread(str(path))[..., :3]
    assert pixels.std() > 0.01, "the figure is uniform"
    return pixels


@pytest.fixture
def pet(tmp_path):
    """An ellipsoid head: a T1w with a dark scalp, grey cortex and bright white matter; an
    SUVR with the cortex at 1.8 and white matter at 0.9, its sidecar naming the reference."""
    i, j, k = np.indices(SHAPE).astype(float)
    radius = np.sqrt(((i - 9.5) / 7) ** 2 + ((j - 11.5) / 9) ** 2 + ((k - 9.5) / 7) ** 2)
    brain = radius < 1
    t1w = np.select([radius < 0.7, brain, radius < 1.25], [0.85, 0.55, 0.3], 0.0)
    suvr = np.select([radius < 0.7, brain], [0.9, 1.8], 0.05)
    paths = {
        "t1w": _save(t1w.astype(np.float32), tmp_path / "t1w.nii.gz"),
        "mask": _save(brain.astype(np.uint8), tmp_path / "mask.nii.gz"),
        "suvr": _save(suvr.astype(np.float32), tmp_path / "sub-01_desc-suvr_pet.nii.gz"),
    }
    (tmp_path / "sub-01_desc-suvr_pet.json").write_text(json.dumps({"ReferenceRegion": "pons"}))
    return paths


def test_suvr_scale_and_reference_region(pet, tmp_path):
    brain = np.ones(100, bool)
    assert pet_figures.suvr_upper_bound(np.linspace(0, 1.5, 100), brain) == 2.0
    assert pet_figures.suvr_upper_bound(np.linspace(0, 3.14, 100), brain) == 3.2
    assert pet_figures.read_reference_region(pet["suvr"]) == "pons"
    assert pet_figures.read_reference_region(pet["t1w"]) is None
    (tmp_path / "t1w.json").write_text("not json")
    assert pet_figures.read_reference_region(pet["t1w"]) is None


def test_suvr_figures(pet, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        measured = pet_figures.plot_suvr(pet["suvr"], pet["t1w"], pet["mask"], tmp_path / "m.png")
        imputed = pet_figures.plot_suvr(
            pet["suvr"], pet["t1w"], pet["mask"], tmp_path / "i.png", imputed=True
        )
    plain, marked = _read_png(measured), _read_png(imputed)
    # the imputed figure is taller by its banner, which is red across the top
    assert marked.shape[0] > plain.shape[0] and marked.shape[1] == plain.shape[1]
    red, green, blue = marked[15, 100:-100].mean(axis=0)
    assert red > 0.8 and green < 0.2 and blue < 0.2
    assert not (plain[:15, :, 0] > plain[:15, :, 1] + 0.5).any()


def _write_tacs(path, columns: list[str]) -> str:
    starts = np.array([0, 30, 60, 120, 300, 600, 1200, 2400], float)
    durations = np.diff(np.append(starts, 3600))
    table = pd.DataFrame({"frame_start": starts, "frame_duration": durations})
    for index, column in enumerate(columns):
        table[column] = (1 + index / 4) * (1 - np.exp(-starts / 600)) * 1000
    table.to_csv(path, sep="\t", index=False)
    return str(path)


def test_time_activity_curves(tmp_path):
    names = ["Left-Cerebral-Cortex", "right_cerebral_cortex", "Brain-Stem", "Left-Hippocampus"]
    tacs = _write_tacs(tmp_path / "tacs.tsv", names)
    _read_png(pet_figures.plot_time_activity(tacs, tmp_path / "tacs.png"))
    # the informative structures only, by FreeSurfer name in any case, left solid, right dashed
    assert pet_figures.tac_curves(names) == [
        ("Left-Cerebral-Cortex", "#cd3e4e", "-"),
        ("right_cerebral_cortex", "#cd3e4e", "--"),
        ("Brain-Stem", "#779fb0", "-"),
    ]
    assert pet_figures.tac_curves(["L-Put", "cortex"]) == [("L-Put", "#ec0db0", "-")]
    # none of them: the first columns as they come
    other = _write_tacs(tmp_path / "other.tsv", ["cortex", "cerebellum"])
    _read_png(pet_figures.plot_time_activity(other, tmp_path / "other.png"))


def test_time_activity_refuses_a_table_without_frames(tmp_path):
    path = tmp_path / "bad.tsv"
    pd.DataFrame({"Left-Putamen": [1.0, 2.0]}).to_csv(path, sep="\t", index=False)
    with pytest.raises(ValueError, match="frame_start, frame_duration"):
        pet_figures.plot_time_activity(str(path), tmp_path / "bad.png")
    assert not list(tmp_path.glob("*.png"))


def test_figure_interfaces(pet, tmp_path, monkeypatch):
    from bids_dl.workflows.interfaces.pet_reports import SuvrFigure, TimeActivityFigure

    monkeypatch.chdir(tmp_path)
    tacs = _write_tacs(tmp_path / "tacs.tsv", ["Left-Putamen", "Right-Putamen"])
    for interface, name in (
        (SuvrFigure(suvr=pet["suvr"], t1w=pet["t1w"], brain_mask=pet["mask"]), "suvr.png"),
        (TimeActivityFigure(tacs=tacs), "tacs.png"),
    ):
        result = interface.run()
        assert result.outputs.out_file == str(tmp_path / name)
        _read_png(tmp_path / name)
    assert SuvrFigure().inputs.imputed is False


def test_report_pet_section(tmp_path):
    from bids_dl.reports.participant import find_figures, write_participant_report

    measured = ["sub-01_trc-FDG_desc-suvr_pet.png", "sub-01_trc-FDG_desc-tacs_pet.png"]
    for subject, names in (("01", measured), ("02", ["sub-02_desc-imputed_pet.png"])):
        figures_dir = tmp_path / f"sub-{subject}" / "figures"
        figures_dir.mkdir(parents=True)
        for name in [f"sub-{subject}_desc-brain_T1w.png", *reversed(names)]:
            (figures_dir / name).write_bytes(b"png")
    pet = {group["id"]: group for group in find_figures(tmp_path, "01")}["pet"]
    assert [figure["path"] for figure in pet["figures"]] == [
        f"sub-01/figures/{n}" for n in measured
    ]
    assert not any(figure["synthetic"] for figure in pet["figures"])
    (imputed,) = {group["id"]: group for group in find_figures(tmp_path, "02")}["pet"]["figures"]
    assert imputed["path"] == "sub-02/figures/sub-02_desc-imputed_pet.png" and imputed["synthetic"]

    source = "sub-01/anat/sub-01_T1w.nii.gz"
    first = write_participant_report(tmp_path, "01", source, [], []).read_text()
    assert '<h2 id="pet">PET</h2>' in first and "synthetic" not in first.split('id="pet"')[1]
    text = write_participant_report(tmp_path, "02", source, [], []).read_text()
    anatomical, section = text.split('<h2 id="pet">PET</h2>')
    assert "_pet.png" not in anatomical
    assert '<p class="synthetic">' in section and '<figure class="synthetic">' in section
    note, caption = section.split('<figcaption class="synthetic">')
    for part in (note, caption):
        assert "SIMULATED" in part and "not a measurement" in part.lower().replace("\n", " ")
