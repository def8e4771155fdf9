"""Naming and writing of derivatives."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_dl import derivatives as d


def test_entities_follow_bids_order():
    name = d.derivative_name({"desc": "preproc", "space": "MNI152NLin2009aSym", "sub": "01"}, "T1w")
    assert name == "sub-01_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"
    xfm = d.derivative_name({"sub": "01", "mode": "image", "to": "X", "from": "T1w"}, "xfm", ".h5")
    assert xfm == "sub-01_from-T1w_to-X_mode-image_xfm.h5"


@pytest.mark.parametrize(
    "entities, suffix",
    [
        ({"sub": "0_1"}, "T1w"),
        ({"sub": "01"}, "T1-w"),
        ({"desc": "x"}, "mask"),
        ({"sub": "01", "bogus": "x"}, "T1w"),
    ],
)
def test_invalid_names_are_refused(entities, suffix):
    with pytest.raises(ValueError):
        d.derivative_name(entities, suffix)


def test_derivative_path_keeps_source_entities():
    source = "/data/sub-01/ses-a/anat/sub-01_ses-a_acq-mprage_run-2_T1w.nii.gz"
    path = d.derivative_path(source, "probseg", label="GM")
    assert path == Path("sub-01/ses-a/anat/sub-01_ses-a_acq-mprage_run-2_label-GM_probseg.nii.gz")
    dropped = d.derivative_path(source, "mask", desc="brain", run=None)
    assert dropped.name == "sub-01_ses-a_acq-mprage_desc-brain_mask.nii.gz"


def test_bids_uri(tmp_path):
    target = tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert d.bids_uri(target, tmp_path, "raw") == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"


def test_bids_uri_names_a_linked_file_where_it_lies(tmp_path):
    """Files linked to storage outside the dataset (DataLad, shared data), and a dataset root
    reached through a link, keep their place in the dataset."""
    storage, dataset = tmp_path / "storage", tmp_path / "dataset"
    (storage).mkdir()
    (storage / "image.nii.gz").write_bytes(b"")
    (dataset / "sub-01" / "anat").mkdir(parents=True)
    linked = dataset / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    linked.symlink_to(storage / "image.nii.gz")
    expected = "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert d.bids_uri(linked, dataset, "raw") == expected
    (tmp_path / "dataset_link").symlink_to(dataset)
    assert d.bids_uri(linked, tmp_path / "dataset_link", "raw") == expected
    assert d.bids_uri(tmp_path / "dataset_link" / linked.relative_to(dataset), dataset, "raw") == (
        expected
    )


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "table.tsv"
    d.write_text_atomic("old\n", target)

    def broken_write(tmp: Path) -> None:
        tmp.write_text("half a fi")
        raise OSError("disk full")

    with pytest.raises(OSError):
        d.write_file_atomic(target, broken_write)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.tsv"]


def test_nifti_and_json_round_trip(tmp_path):
    image = nb.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    path = d.write_nifti_atomic(image, tmp_path / "a" / "x.nii.gz")
    assert np.array_equal(nb.load(path).get_fdata(), image.get_fdata())
    d.write_json_atomic({"b": np.float32(1.5), "a": Path("/x")}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": "/x", "b": 1.5}


def test_dataset_description(tmp_path, tiny_bids):
    d.write_dataset_description(tmp_path / "out", tiny_bids)
    description = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bids_dl"
    assert description["SourceDatasets"][0]["URL"] == tiny_bids.resolve().as_uri()
    assert (tmp_path / "out" / "README.md").exists()


def test_tissue_lookup_has_bids_columns(tmp_path):
    lines = d.write_tissue_lookup(tmp_path).read_text().splitlines()
    assert lines[0].split("\t") == ["index", "name", "abbreviation", "color"]
    assert [line.split("\t")[2] for line in lines[1:]] == ["GM", "WM", "CSF"]


def test_structure_lookup_lists_every_structure_with_a_colour(tmp_path):
    from bids_dl.models.labels import STRUCTURES

    lines = d.write_structure_lookup(tmp_path).read_text().splitlines()
    assert lines[0].split("\t") == ["index", "name", "abbreviation", "color"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == sorted(STRUCTURES) and len(rows) == 32
    assert rows[0][1] == "Left-Cerebral-White-Matter" and all(len(r[3]) == 7 for r in rows)


def test_structure_volumes_against_hand_counts(tmp_path):
    from bids_dl.workflows.interfaces.morphometry import structure_volumes

    aseg = np.zeros((10, 10, 10), np.uint8)
    aseg[:2] = 17  # 200 voxels of left hippocampus
    aseg[5, 5, 5] = 24  # one voxel of CSF
    aseg[9, 9, 9] = 99  # not a structure: counted nowhere
    affine = np.diag([2.0, 1.0, 1.5, 1.0])  # 3 mm^3 voxels
    nb.save(nb.Nifti1Image(aseg, affine), tmp_path / "aseg.nii.gz")
    volumes = structure_volumes(str(tmp_path / "aseg.nii.gz"))
    assert volumes["left_hippocampus_mm3"] == 600.0 and volumes["extraventricular_csf_mm3"] == 3.0
    assert volumes["total_intracranial_mm3"] == 603.0 and volumes["right_hippocampus_mm3"] == 0
    assert len(volumes) == 33
    # every column has a data-dictionary entry for the group table
    assert set(volumes) <= set(d.MEASURES_DICTIONARY)


def test_group_figure_wraps_many_measures_into_rows(tmp_path):
    """~40 measures (the structures' volumes) in one row made each plot too small to read."""
    import pandas as pd
    from PIL import Image

    from bids_dl.group import MEASURES_PER_ROW, _plot_measures

    table = pd.DataFrame({f"measure_{i}": [1.0 + i, 2.0, 3.0] for i in range(20)})
    table.insert(0, "participant_id", ["sub-01", "sub-02", "sub-03"])
    width, height = Image.open(_plot_measures(table, tmp_path / "group.png")).size
    rows = -(-20 // MEASURES_PER_ROW)
    assert rows == 3 and height / width == pytest.approx(3 * rows / (2.2 * MEASURES_PER_ROW), 0.05)
