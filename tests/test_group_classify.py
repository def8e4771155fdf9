"""Classification in the BIDS-App: ``group --classify`` trains on hand-written participant
results (no pipeline run) and reports; ``--classifier`` adds a bundle's prediction to each
participant's measures; bad inputs are one line and exit 2 before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bids_dl import __version__
from bids_dl.cli.run import main
from bids_dl.inputs import InputError

#: the sample dataset's five participants: three controls, a glioma and a WMH subject
DIAGNOSIS = {"01": "control", "02": "patient", "03": "patient", "04": "control", "05": "control"}


def write_measures(out: Path, label: str, patient: bool, rng, **extra) -> Path:
    """One participant's ``desc-anat_measures.tsv``, as the participant level writes it."""
    anat = out / f"sub-{label}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    row = {
        "participant_id": f"sub-{label}",
        "brain_mask_mm3": 1.2e6 + rng.normal(0, 1e4),
        "left_hippocampus_mm3": 4000 - 600 * patient + rng.normal(0, 50),
        "right_hippocampus_mm3": 4100 - 400 * patient + rng.normal(0, 50),
        "total_intracranial_mm3": 1.5e6 + rng.normal(0, 1e4),
        "wmh_mm3": 2000 * patient + abs(rng.normal(0, 100)),
        **extra,
    }
    path = anat / f"sub-{label}_desc-anat_measures.tsv"
    pd.DataFrame([row]).to_csv(path, sep="\t", index=False)
    return path


def write_dataset(root: Path, diagnosis: dict[str, str] = DIAGNOSIS) -> tuple[Path, Path]:
    """BIDS_DIR (dataset_description.json and participants.tsv: diagnosis, age, a one-value
    site) and OUTPUT_DIR with each participant's measures."""
    bids, out = root / "bids", root / "out"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    rng = np.random.default_rng(0)
    rows = []
    for i, (label, group) in enumerate(diagnosis.items()):
        write_measures(out, label, group == "patient", rng)
        rows.append({"participant_id": f"sub-{label}", "age": str(40 + 7 * i),
                     "site": "a", "diagnosis": group})  # fmt: skip
    pd.DataFrame(rows).to_csv(bids / "participants.tsv", sep="\t", index=False)
    return bids, out


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("bids_dl: error: ") and expected in lines[-1], result.output
    assert "Traceback" not in result.output


FEATURES = ("--features", "left_", "right_", "wmh_mm3", "--covariates", "age")


def test_the_group_level_trains_on_a_tiny_cohort_and_reports_it(tmp_path):
    bids, out = write_dataset(tmp_path)
    result = invoke(bids, out, "group", "--classify", "diagnosis", *FEATURES, "--folds", "5")
    assert result.exit_code == 0, result.output

    folder = out / "group" / "classify-diagnosis"
    for name in ("cv_predictions.tsv", "cv_predictions.json", "metrics.json", "bundle/model.json"):
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text(), parse_constant=pytest.fail)
    folds = metrics["cross_validation"]
    # 2 patients: 2 outer folds, and an outer training set holds 1 patient: no inner search
    assert (
        folds["outer_folds"] == 2
        and folds["inner_search"] == "no inner search: too few participants"
    )
    assert list(metrics["models"]) == ["linear", "mlp"] and metrics["counts"]["patient"] == 2
    assert len(pd.read_csv(folder / "cv_predictions.tsv", sep="\t")) == 5
    card = json.loads((folder / "bundle" / "model.json").read_text())
    assert card["version"] == __version__ and card["task"] == "classify"

    html = (out / "group.html").read_text()
    assert "<h2>Classification: diagnosis</h2>" in html
    assert "no inner search: too few participants" in html and "(final)" in html
    assert "Features with the largest weights" in html and "left_hippocampus_mm3" in html
    kinds = ("roc", "reliability", "confusion", "weights")
    for kind in kinds:
        figure = out / "figures" / f"classify-diagnosis_{kind}.png"
        assert figure.stat().st_size > 1000 and f'src="figures/{figure.name}"' in html
    assert f'data-images-total="{1 + len(kinds)}"' in html  # with the measures' strip plots


def test_a_regression_at_the_group_level_draws_predicted_against_observed(tmp_path):
    bids, out = write_dataset(tmp_path)
    result = invoke(bids, out, "group", "--classify", "age", "--features", "left_", "wmh_mm3",
                    "--classify-models", "linear")  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "group" / "classify-age" / "metrics.json").read_text())
    assert metrics["task"] == "regression" and list(metrics["models"]) == ["linear"]
    weights = metrics["feature_importance"]["linear"]["features"]
    assert [abs(w["weight"]) for w in weights] == sorted(
        (abs(w["weight"]) for w in weights), reverse=True
    )
    assert (out / "figures" / "classify-age_predicted.png").is_file()
    assert "against the observed values" in (out / "group.html").read_text()


def test_bad_classification_options_are_refused_before_any_work(tmp_path):
    bids, out = write_dataset(tmp_path)
    group = [bids, out, "group"]
    assert_one_line_error(
        invoke(*group, "--classify", "mrs", *FEATURES), "--classify mrs: no such column"
    )
    assert_one_line_error(
        invoke(*group, "--classify", "site", *FEATURES),
        "--classify site has 1 text values ('a')",
    )
    one_patient = [*group, "--participant-label", "01", "02", "04", "--classify", "diagnosis"]
    assert_one_line_error(
        invoke(*one_patient, *FEATURES), "--classify diagnosis: 1 participant in class patient"
    )
    assert_one_line_error(invoke(*group, "--features", "left_"), "--features: give --classify")
    assert_one_line_error(
        invoke(*group, "--classify", "diagnosis", "--features", "volume_"),
        "--features volume_: no measure column starts with it",
    )
    assert_one_line_error(
        invoke(bids, out, "participant", "--classify", "diagnosis", "-w", tmp_path / "w"),
        "--classify trains at the group level",
    )
    assert_one_line_error(
        invoke(*group, "--classifier", tmp_path), "--classifier predicts at the participant level"
    )
    assert not (out / "group").exists() and not (out / "group.html").exists()


def test_a_participant_level_classifier_must_be_a_classify_bundle(tmp_path):
    bids, out = write_dataset(tmp_path)
    participant = [bids, out, "participant", "-w", tmp_path / "w", "--classifier"]
    assert_one_line_error(invoke(*participant, tmp_path / "none"), "no such folder")
    card = {"card_version": 1, "name": "t", "version": "1", "task": "tumor", "architecture": {},
            "inputs": {}, "outputs": {"labels": {"1": "tumor"}}}  # fmt: skip
    (tmp_path / "tumor").mkdir()
    (tmp_path / "tumor" / "model.json").write_text(json.dumps(card))
    assert_one_line_error(invoke(*participant, tmp_path / "tumor"), "not a classify model")


@pytest.fixture
def trained(tmp_path) -> tuple[Path, Path]:
    """BIDS_DIR, and a linear bundle trained by bids_dl-classify on its participants."""
    from bids_dl.cli.classify import main as classify

    bids, out = write_dataset(tmp_path / "training")
    result = CliRunner().invoke(classify, [
        "train", str(out), str(tmp_path / "trained"), "--participants",
        str(bids / "participants.tsv"), "--target", "diagnosis", "--features", "left_", "wmh_mm3",
        "--covariates", "age", "--models", "linear", "--bootstrap", "100",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    return bids, tmp_path / "trained" / "bundle"


def test_the_participant_level_adds_the_prediction_to_the_measures(trained, tmp_path):
    from bids_dl.classify_features import read_measures
    from bids_dl.group import participant_dictionaries
    from bids_dl.group_classify import (
        check_classifier_covariates,
        measures_file,
        write_participant_predictions,
    )
    from bids_dl.inputs import SubjectInputs

    bids, bundle = trained
    out = tmp_path / "new"
    rng = np.random.default_rng(1)
    files = [write_measures(out, "02", True, rng), write_measures(out, "04", False, rng)]
    t1w = bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz"  # named, never read
    assert measures_file(out, SubjectInputs("02", files={"t1w": [str(t1w)]})) == files[0]
    for _ in range(2):  # a rerun replaces the columns
        write_participant_predictions(out, bids, bundle, files)
    tables = [pd.read_csv(path, sep="\t") for path in files]
    assert list(tables[0].columns[-2:]) == ["diagnosis_predicted", "diagnosis_model"]
    assert tables[0]["diagnosis_predicted"].iloc[0] > tables[1]["diagnosis_predicted"].iloc[0]
    assert tables[0]["diagnosis_model"].iloc[0] == f"diagnosis-linear {__version__}"
    dictionary = json.loads(files[0].with_suffix(".json").read_text())
    assert (
        "probability that diagnosis is 'patient'"
        in dictionary["diagnosis_predicted"]["Description"]
    )
    assert "sha256" in dictionary["diagnosis_model"]["Description"]
    assert dictionary["wmh_mm3"]["Units"] == "mm^3"
    assert "diagnosis_predicted" in participant_dictionaries(out)
    # the prediction never becomes a feature of a later training
    with pytest.raises(InputError, match="--features diagnosis: no measure column"):
        read_measures(out, ["sub-02"], ("diagnosis",), None)

    table = tables[1].drop(columns="wmh_mm3")
    table.to_csv(files[1], sep="\t", index=False)
    with pytest.raises(InputError, match="sub-04 has no wmh_mm3 in its measures tables"):
        write_participant_predictions(out, bids, bundle, files[1:])
    check_classifier_covariates(bundle, bids, ["02", "04"])
    with pytest.raises(InputError, match="sub-09 is not in"):
        check_classifier_covariates(bundle, bids, ["09"])
    shutil.rmtree(out / "sub-02")
    with pytest.raises(InputError, match="does not exist"):
        write_participant_predictions(out, bids, bundle, files[:1])


def test_roc_points_against_hand_computed_values():
    from bids_dl.models.classifier_metrics import auc
    from bids_dl.reports.classify_figures import roc_points

    target, probability = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    fpr, tpr = roc_points(target, probability)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert np.isclose(np.trapezoid(tpr, fpr), auc(target, probability))
    fpr, tpr = roc_points(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9]))  # a tie: one point
    assert fpr.tolist() == [0, 0, 1] and tpr.tolist() == [0, 0.5, 1]
