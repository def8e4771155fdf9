"""``bids_dl-classify``: features found in a derivatives folder, labels and covariates read
from participants.tsv, one-line refusals of bad input, and a tiny train + predict."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bids_dl.classify_features import (
    FeatureOptions,
    FeatureSpec,
    load_cohort,
    numeric_values,
    parse_covariates,
    parse_target,
    plan_training,
    read_measures,
)
from bids_dl.classify_images import (
    block_mean,
    find_images,
    image_key,
    read_atlas,
    regional_means,
)
from bids_dl.cli.classify import main
from bids_dl.inputs import InputError

SHAPE = (8, 8, 6)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
N = 16


def _save(data: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nb.save(nb.Nifti1Image(data, affine), path)
    return path


def write_derivatives(root: Path, n: int = N) -> Path:
    """``n`` participants: a lesion mask (space-Test, larger on the left for the even ones,
    the 'poor' outcome), a measures table, and participants.tsv with a score, an outcome, age
    (one ``89+``) and sex; an atlas of two halves with its names."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1, n + 1):
        label, poor = f"{i:02d}", i % 2 == 0
        anat = root / f"sub-{label}" / "anat"
        mask = np.zeros(SHAPE, np.uint8)
        mask[: 2 + 2 * poor, 2:6, 1:5] = 1
        _save(mask, anat / f"sub-{label}_space-Test_desc-lesion_mask.nii.gz")
        measures = {
            "participant_id": f"sub-{label}",
            "left_hippocampus_mm3": 4000 - 300 * poor + rng.normal(0, 50),
            "right_hippocampus_mm3": 4100 + rng.normal(0, 50),
            "total_intracranial_mm3": 1.5e6 + rng.normal(0, 1e4),
        }
        pd.DataFrame([measures]).to_csv(
            anat / f"sub-{label}_desc-anat_measures.tsv", sep="\t", index=False
        )
        rows.append({
            "participant_id": f"sub-{label}",
            "age": "89+" if i == 3 else str(60 + i),
            "sex": "MF"[i % 2],
            "score": str(2 * i + (8 if poor else 0)),
            "outcome": "poor" if poor else "good",
        })  # fmt: skip
    table = pd.DataFrame(rows)
    table.loc[n - 1, ["score", "outcome"]] = "n/a"  # no label: left out and counted
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    atlas = np.ones(SHAPE, np.int16)
    atlas[SHAPE[0] // 2 :] = 2
    _save(atlas, root.parent / "atlas.nii.gz")
    (root.parent / "atlas.txt").write_text("1|LEFT|left half\n2|RIGHT|right half\n")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "derivative"})
    )
    return root


@pytest.fixture
def derivatives(tmp_path: Path) -> Path:
    return write_derivatives(tmp_path / "derivatives")


def invoke(*args) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def assert_refused(arguments: list, expected: str) -> None:
    """Exit code 2 and one line on stderr that says ``expected``, no traceback."""
    code, _, stderr = invoke(*arguments)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bids_dl-classify: error: "), stderr
    assert expected in lines[0], lines[0]


def test_top_coded_ages_are_read_as_numbers_and_other_text_is_refused():
    numbers, top = numeric_values(pd.Series(["70", "89+", "n/a", "90.5"]), "age")
    assert np.allclose(numbers[[0, 1, 3]], [70, 89, 90.5]) and np.isnan(numbers[2])
    assert top == 1
    with pytest.raises(InputError, match="non-numeric values \\('unknown'\\)"):
        numeric_values(pd.Series(["70", "unknown"]), "age")


def test_the_target_decides_the_task():
    table = pd.DataFrame(
        {
            "nihss": ["1", "7", "n/a", "12"],
            "dead": ["0", "1", "1", "n/a"],
            "group": ["patient", "control", "n/a", "patient"],
            "site": ["a", "b", "c", "a"],
        }
    )
    target, labels = parse_target(table, "nihss")
    assert target.task == "regression" and labels.isna().tolist() == [False, False, True, False]
    target, labels = parse_target(table, "nihss", threshold=7)
    assert target.task == "classification" and target.class_names == ("nihss<7", "nihss>=7")
    assert labels.tolist()[:2] == [0, 1] and np.isnan(labels[2])
    assert parse_target(table, "dead")[0].task == "classification"
    target, labels = parse_target(table, "group")
    assert target.class_names == ("control", "patient") and labels.tolist()[:2] == [1, 0]
    with pytest.raises(InputError, match="3 text values"):
        parse_target(table, "site")
    with pytest.raises(InputError, match="--threshold needs a numeric --target"):
        parse_target(table, "group", threshold=1)
    with pytest.raises(InputError, match="no such column"):
        parse_target(table, "mrs")


def test_text_covariates_are_coded_as_in_training():
    table = pd.DataFrame({"sex": ["M", "F", "n/a"], "age": ["89+", "70", "60"]})
    covariates, values, top = parse_covariates(table, ("sex", "age"))
    assert covariates[0].coding == {"F": 0, "M": 1} and top == {"age": 1}
    assert values["sex"].tolist()[:2] == [1, 0] and values["age"].tolist() == [89, 70, 60]
    only_males = pd.DataFrame({"sex": ["M", "M"]})
    _, values, _ = parse_covariates(only_males, ("sex",), covariates)
    assert values["sex"].tolist() == [1, 1]
    with pytest.raises(InputError, match="or two text values, coded 0/1"):
        parse_covariates(pd.DataFrame({"sex": ["M", "F", "O"]}), ("sex",))
    with pytest.raises(InputError, match="values the model was not trained on \\('O'\\)"):
        parse_covariates(pd.DataFrame({"sex": ["O"]}), ("sex",), covariates)


def test_image_features_are_found_by_their_entities(derivatives):
    found = find_images(derivatives, "desc-lesion_mask", None)
    assert (
        len(found) == N and found["sub-01"][0].name == "sub-01_space-Test_desc-lesion_mask.nii.gz"
    )
    assert len(find_images(derivatives, "space-Test_desc-lesion_mask.nii.gz", None)) == N
    assert not find_images(derivatives, "space-MNI_desc-lesion_mask", None)
    assert not find_images(derivatives, "desc-lesion_mask", "01")  # no session
    assert image_key("desc-lesion_mask") == "lesion"
    assert image_key("label-GM_probseg") == "label_GM_probseg"
    with pytest.raises(InputError, match="expected BIDS entities"):
        find_images(derivatives, "lesion mask", None)


def test_measures_are_picked_by_column_prefix(derivatives):
    table = read_measures(derivatives, ["sub-01", "sub-02"], ("left_", "total_intra"), None)
    assert list(table.columns) == ["left_hippocampus_mm3", "total_intracranial_mm3"]
    with pytest.raises(InputError, match="--features volume_: no measure column starts with it"):
        read_measures(derivatives, ["sub-01"], ("volume_",), None)
    anat = derivatives / "sub-01" / "anat"
    dwi = pd.DataFrame({"participant_id": ["sub-01"], "dwi_fa_mean_wm": ["0.45"]})
    dwi.to_csv(derivatives / "sub-01" / "sub-01_desc-dwi_measures.tsv", sep="\t", index=False)
    table = read_measures(derivatives, ["sub-01"], ("dwi_fa", "left_"), None)
    assert list(table.columns) == ["left_hippocampus_mm3", "dwi_fa_mean_wm"]
    assert table.loc["sub-01", "dwi_fa_mean_wm"] == "0.45"
    (anat / "sub-01_ses-2_desc-anat_measures.tsv").write_text(
        (anat / "sub-01_desc-anat_measures.tsv").read_text()
    )
    with pytest.raises(InputError, match="choose one session with --session-label"):
        read_measures(derivatives, ["sub-01"], ("left_",), None)
    assert list(read_measures(derivatives, ["sub-01"], ("left_",), "2").columns) == [
        "left_hippocampus_mm3"
    ]


def test_regional_loads_and_block_means_against_hand_computed_values():
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    atlas = np.zeros((2, 3, 4), int)
    atlas[0], atlas[1, 0] = 1, 3
    assert np.allclose(regional_means(data, atlas, (1, 3)), [5.5, 13.5])
    means = block_mean(data, (2, 2, 2))  # the last block along y holds one row
    assert means.shape == (1, 2, 2)
    assert np.isclose(means[0, 0, 0], data[:, :2, :2].mean())
    assert np.isclose(means[0, 1, 1], data[:, 2:, 2:].mean())


def test_the_atlas_path_gives_each_participants_lesion_load_per_region(derivatives):
    options = FeatureOptions(
        target="outcome",
        images=("desc-lesion_mask",),
        atlas=derivatives.parent / "atlas.nii.gz",
        atlas_names=derivatives.parent / "atlas.txt",
        covariates=("age", "sex"),
    )
    plan = plan_training(derivatives, derivatives / "participants.tsv", options)
    assert plan.left_out == {"no label": 1} and plan.top_coded == {"age": 1}
    cohort = load_cohort(plan)
    assert cohort.feature_names == ("lesion_LEFT", "lesion_RIGHT", "age", "sex")
    assert cohort.class_names == ("good", "poor") and cohort.target.tolist()[:2] == [0, 1]
    region_voxels = 4 * 8 * 6
    expected_left = [2 * 4 * 4 / region_voxels, 4 * 4 * 4 / region_voxels]
    assert np.allclose(cohort.tabular[:2, 0], expected_left)
    assert np.allclose(cohort.tabular[:, 1], 0) and cohort.tabular[2, 2] == 89
    spec = FeatureSpec.from_json(json.loads(json.dumps(plan.spec.to_json())))
    assert spec == plan.spec
    assert read_atlas(options.atlas, options.atlas_names).regions == ("LEFT", "RIGHT")


def test_bad_inputs_are_refused_in_one_line(derivatives, tmp_path):
    train = ["train", derivatives, tmp_path / "out"]
    lesion = ["--image-features", "desc-lesion_mask"]
    assert_refused([*train, "--target", "score"], "no features: give --features")
    assert_refused([*train, "--target", "mrs", *lesion], "--target mrs: no such column")
    assert_refused(
        [*train, "--target", "score", "--threshold", "100", *lesion],
        "no participant in class score>=100",
    )
    assert_refused(
        [*train, "--target", "outcome", "--features", "left_", "--participant-label", "01", "02",
         "04", "06"],
        "--target outcome: 1 participant in class good: a classification needs two classes, "
        "each of at least 2 participants",
    )  # fmt: skip
    assert_refused(
        [*train, "--target", "outcome", "--covariates", "outcome", "--features", "nothing_"],
        "--features nothing_: no measure column",
    )
    assert_refused(
        [
            *train,
            "--target",
            "score",
            "--covariates",
            "age",
            "--atlas",
            derivatives.parent / "atlas.nii.gz",
        ],
        "--atlas summarises image features",
    )
    assert_refused(
        [*train, "--target", "score", "--models", "cnn", "--features", "left_"],
        "model cnn needs --image-features",
    )
    participants = pd.read_csv(derivatives / "participants.tsv", sep="\t", dtype=str)
    participants.loc[0, "age"] = "about 60"
    participants.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    assert_refused(
        [*train, "--target", "score", "--covariates", "age", *lesion,
         "--participants", tmp_path / "participants.tsv"],
        "covariate age has text values ('about 60')",
    )  # fmt: skip


def test_missing_files_and_mixed_grids_are_refused_before_any_work(derivatives, tmp_path):
    train = ["train", derivatives, tmp_path / "out", "--target", "score", "--folds", "3",
             "--inner-folds", "2", "--image-features", "desc-lesion_mask"]  # fmt: skip
    mask = derivatives / "sub-02" / "anat" / "sub-02_space-Test_desc-lesion_mask.nii.gz"
    _save(np.zeros((9, 8, 6), np.uint8), mask)
    assert_refused(train, "sub-02's image is on another grid ((9, 8, 6) at 3x3x3 mm)")
    mask.unlink()
    assert_refused(train, "1 participant(s) have no desc-lesion_mask image")
    (derivatives / "sub-05" / "anat" / "sub-05_desc-anat_measures.tsv").unlink()
    assert_refused([*train[:9], "--features", "left_"], "have no sub-*/**/sub-*_measures.tsv")
    assert not (tmp_path / "out").exists()


def test_train_then_predict_with_the_linear_model(derivatives, tmp_path):
    pytest.importorskip("bids_dl.models.classifier_bundle", reason="the classifier core")
    out = tmp_path / "out"
    code, stdout, stderr = invoke(
        "train", derivatives, out, "--target", "outcome", "--features", "left_", "right_",
        "--image-features", "desc-lesion_mask", "--atlas", derivatives.parent / "atlas.nii.gz",
        "--atlas-names", derivatives.parent / "atlas.txt", "--covariates", "age", "sex",
        "--models", "linear", "--folds", "3", "--inner-folds", "2", "--bootstrap", "200",
    )  # fmt: skip
    assert code == 0, stderr
    assert "left out: 1 no label" in stdout
    predictions = pd.read_csv(out / "cv_predictions.tsv", sep="\t")
    assert list(predictions.columns) == ["participant_id", "fold", "target", "linear"]
    assert len(predictions) == N - 1 and set(predictions["fold"]) == {0, 1, 2}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["model"] == "linear" and metrics["left_out"] == {"no label": 1}
    auc = metrics["models"]["linear"]["metrics"]["auc"]
    assert auc["low"] <= auc["estimate"] <= auc["high"]
    assert metrics["counts"] == {"participants": N - 1, "good": 8, "poor": 7}

    new = tmp_path / "new"
    for label in ("03", "04"):
        for path in (derivatives / f"sub-{label}").rglob("*.*"):
            target = new / path.relative_to(derivatives)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    code, stdout, stderr = invoke(
        "predict", out / "bundle", new, tmp_path / "predicted",
        "--participants", derivatives / "participants.tsv",
    )  # fmt: skip
    assert code == 0, stderr
    table = pd.read_csv(tmp_path / "predicted" / "predictions.tsv", sep="\t")
    assert table["participant_id"].tolist() == ["sub-03", "sub-04"]
    assert (table["model"] == "linear").all() and table["probability"].between(0, 1).all()
    assert table["prediction"].tolist() == ["good", "poor"]

    (new / "sub-04" / "anat" / "sub-04_desc-anat_measures.tsv").unlink()
    assert_refused(
        ["predict", out / "bundle", new, tmp_path / "again", "--participants",
         derivatives / "participants.tsv"],
        "1 participant(s) have no sub-*/**/sub-*_measures.tsv",
    )  # fmt: skip


def strict_json(path: Path) -> dict:
    """A JSON file that holds no NaN or Infinity (which JSON does not have)."""

    def refuse(constant: str):
        raise AssertionError(f"{path.name} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_a_tiny_cohort_shrinks_the_folds_and_skips_the_inner_search(derivatives, tmp_path):
    from bids_dl import __version__
    from bids_dl.classify_training import NO_INNER_SEARCH, json_safe

    out = tmp_path / "out"
    code, stdout, stderr = invoke(
        "train", derivatives, out, "--target", "outcome", "--features", "left_", "right_",
        "--models", "linear", "mlp", "--participant-label", "01", "02", "03", "04",
        "--bootstrap", "100",
    )  # fmt: skip
    assert code == 0, stderr
    assert "outer folds reduced from 5 to 2" in stdout and NO_INNER_SEARCH in stdout
    metrics = strict_json(out / "metrics.json")
    folds = metrics["cross_validation"]
    assert folds["outer_folds"] == 2 and folds["inner_folds"] is None
    assert folds["inner_search"] == NO_INNER_SEARCH and folds["final_model_inner_folds"] == 2
    assert metrics["models"]["linear"]["hyperparameter_search"] == NO_INNER_SEARCH
    assert metrics["models"]["linear"]["hyperparameters"] == [{"C": 1.0}, {"C": 1.0}]
    assert metrics["models"]["linear"]["confusion_matrix"] is not None
    weights = metrics["feature_importance"]["linear"]["features"]
    assert {w["feature"] for w in weights} == {"left_hippocampus_mm3", "right_hippocampus_mm3"}
    assert abs(weights[0]["weight"]) >= abs(weights[1]["weight"])
    card = strict_json(out / "bundle" / "model.json")
    assert card["version"] == __version__
    final = metrics["final"]["model"]
    assert card["metrics"]["feature_importance"] == metrics["feature_importance"][final]
    assert json_safe({"r": float("nan"), "x": [np.float64(np.inf), 1.5]}) == {
        "r": None,
        "x": [None, 1.5],
    }


def test_grouped_participants_share_their_fold(derivatives, tmp_path):
    """--groups: no fold splits a group (here a 'site' of three participants), and the
    outer folds are limited by the groups of the smallest class."""
    participants = pd.read_csv(derivatives / "participants.tsv", sep="\t")
    participants["site"] = [f"s{i // 3}" for i in range(len(participants))]
    participants.to_csv(derivatives / "participants.tsv", sep="\t", index=False)
    out = tmp_path / "out"
    code, stdout, stderr = invoke(
        "train", derivatives, out, "--target", "outcome", "--features", "left_", "right_",
        "--groups", "site", "--models", "linear", "--inner-folds", "2", "--bootstrap", "100",
    )  # fmt: skip
    assert code == 0, stderr
    folds = pd.read_csv(out / "cv_predictions.tsv", sep="\t").merge(participants)
    assert (folds.groupby("site")["fold"].nunique() == 1).all()
    metrics = strict_json(out / "metrics.json")
    assert metrics["cross_validation"]["groups"] == "site"
    assert metrics["cross_validation"]["outer_folds"] == 5
    assert_refused(
        ["train", derivatives, tmp_path / "again", "--target", "outcome", "--features",
         "left_", "--groups", "centre"],
        "--groups centre: no such column",
    )  # fmt: skip
    assert_refused(
        ["train", derivatives, tmp_path / "twice", "--target", "outcome", "--image-features",
         "desc-lesion_mask", "space-Test_desc-lesion_mask", "--atlas",
         derivatives.parent / "atlas.nii.gz"],
        "two features would share the name lesion_1",
    )  # fmt: skip
