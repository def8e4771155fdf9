"""Classification in the BIDS-App: the group level trains (``--classify``), the participant
level predicts (``--classifier``), both with :mod:`bids_dl.classify_training`, the code of
``bids_dl-classify``.

The group level reads the target and covariates from ``BIDS_DIR/participants.tsv`` and the
features from the participants' results in ``OUTPUT_DIR`` (their ``*_measures.tsv``, and maps),
and writes ``OUTPUT_DIR/group/classify-<column>/`` (``cv_predictions.tsv`` + JSON,
``metrics.json``, ``bundle/``) and the data of the report's Classification section.

The participant level adds one participant's prediction to its own measures table (two
columns, and their entries in the table's JSON dictionary): nothing shared is written, so that
participants run as separate jobs (a SLURM array) never write the same file.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from bids_dl.classify_features import (
    FeatureOptions,
    load_cohort,
    parse_covariates,
    plan_prediction,
    read_participants,
)
from bids_dl.classify_prediction import read_bundle
from bids_dl.classify_training import (
    TrainingOptions,
    TrainingPlan,
    check_training,
    run_training,
    write_tsv,
)
from bids_dl.config import Config
from bids_dl.derivatives import (
    MEASURES_DICTIONARY,
    derivative_path,
    parse_entities,
    write_json_atomic,
)
from bids_dl.inputs import InputError, SubjectInputs

LOGGER = logging.getLogger("bids_dl")
#: where the group level writes, under OUTPUT_DIR
GROUP_FOLDER = Path("group")
#: the features listed in the report
TOP_FEATURES = 10


@dataclass
class GroupClassification:
    """A checked ``--classify``: the training plan and the participants left out before it."""

    training: TrainingPlan
    output_dir: Path
    not_run: dict[str, int]


def classify_folder(column: str) -> Path:
    """``group/classify-<column>``, the column reduced to letters and digits (a BIDS label)."""
    label = re.sub(r"[^0-9A-Za-z]", "", column) or "target"
    return GROUP_FOLDER / f"classify-{label}"


def check_group_classification(config: Config, command: str = "") -> GroupClassification:
    """Every check of ``--classify``, before any work: participants.tsv and the target, the
    features in OUTPUT_DIR, the models and folds (:class:`InputError`, one line)."""
    execution, settings = config.execution, config.workflow
    output_dir = execution.output_dir
    participants = execution.bids_dir / "participants.tsv"
    if not participants.is_file():
        raise InputError(f"--classify reads {participants}, which does not exist")
    if len(execution.session_labels) > 1:
        raise InputError("--classify reads one session: give at most one --session-label")
    table = read_participants(participants)
    labels, not_run = _participants_with_results(table, output_dir, execution.participant_labels)
    features = FeatureOptions(
        target=settings.classify_target,
        target_option="--classify",
        threshold=settings.classify_threshold,
        covariates=tuple(settings.classify_covariates),
        prefixes=tuple(settings.classify_features),
        images=tuple(settings.classify_image_features),
        session=execution.session_labels[0] if execution.session_labels else None,
        participant_labels=tuple(labels),
        groups=settings.classify_groups,
        groups_option="--classify-groups",
    )
    options = TrainingOptions(
        output_dir=output_dir / classify_folder(settings.classify_target),
        models=tuple(settings.classify_models),
        folds=settings.classify_folds,
        seed=settings.random_seed or 0,
        threads=config.nipype.omp_nthreads,
        command=command,
    )
    training = check_training(output_dir, participants, features, options)
    return GroupClassification(training, options.output_dir, not_run)


def _participants_with_results(
    table: pd.DataFrame, output_dir: Path, requested: list[str]
) -> tuple[list[str], dict[str, int]]:
    """The participants of participants.tsv that have a folder in OUTPUT_DIR (or those asked
    for with --participant-label), and how many were left out for lacking one."""
    if requested:
        return [f"sub-{label}" for label in requested], {}
    processed = {p.name for p in output_dir.glob("sub-*") if p.is_dir()}
    labels = [p for p in table.index if p in processed]
    if not labels:
        raise InputError(
            f"no participant of participants.tsv has results in {output_dir}: run the "
            "participant level first"
        )
    not_run = {"no participant-level results": len(table) - len(labels)}
    return labels, {why: n for why, n in not_run.items() if n}


def run_group_classification(classification: GroupClassification) -> dict:
    """Train (``classify_training``), then draw the figures; the report section's data."""
    training = classification.training
    training.cohort.left_out = {**classification.not_run, **training.cohort.left_out}
    run_training(training, report=LOGGER.info)
    return classification_section(classification.output_dir, training.source)


def classification_section(folder: Path, output_dir: Path) -> dict:
    """What group.html (in ``output_dir``) shows of a training in ``folder`` (its
    ``metrics.json`` and ``cv_predictions.tsv``); its figures are drawn into
    ``output_dir/figures`` with the other group figures."""
    from bids_dl.reports import classify_figures as figures

    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    predictions = pd.read_csv(folder / "cv_predictions.tsv", sep="\t")
    task, final = metrics["task"], metrics["final"]["model"]
    models = list(metrics["models"])
    importance = metrics["feature_importance"].get(final, {})
    drawn = figures.draw_all(output_dir / "figures", folder.name, metrics, predictions)
    return {
        "target": metrics["target"],
        "task": task,
        "folder": _relative(folder, output_dir),
        "counts": metrics["counts"],
        "left_out": metrics["left_out"],
        "primary_metric": metrics["primary_metric"],
        "metric_names": list(metrics["models"][models[0]]["metrics"]),
        "models": [_model_row(name, metrics["models"][name], metrics) for name in models],
        "cross_validation": metrics["cross_validation"],
        "final": metrics["final"],
        "importance": {
            "model": final,
            "method": importance.get("method", ""),
            "features": importance.get("features", [])[:TOP_FEATURES],
        },
        "figures": [{"path": _relative(path, output_dir), "title": title} for path, title in drawn],
    }


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _model_row(name: str, entry: dict, metrics: dict) -> dict:
    """One line of the report's table: each metric ``estimate [low, high]``, the paired
    difference to linear in the primary metric, and the hyper-parameter search."""
    primary = metrics["primary_metric"]
    difference = entry.get("difference_to_linear", {}).get(primary)
    return {
        "name": name,
        "final": name == metrics["final"]["model"],
        "metrics": {k: _interval(v) for k, v in entry["metrics"].items()},
        "difference": _interval(difference) if difference else "",
        "search": entry.get("hyperparameter_search", ""),
    }


def _interval(value: dict) -> str:
    def number(x):
        return "n/a" if x is None else f"{x:.3f}"

    return f"{number(value['estimate'])} [{number(value['low'])}, {number(value['high'])}]"


def check_classifier_covariates(bundle: Path, bids_dir: Path, labels: list[str]) -> None:
    """Before a run: the covariates the bundle needs are in participants.tsv for every
    participant (the measures and maps come from the run itself: checked after it)."""
    _, spec, _ = read_bundle(bundle, "--classifier")
    if not spec.covariates:
        return
    participants = bids_dir / "participants.tsv"
    needed = ", ".join(c.column for c in spec.covariates)
    if not participants.is_file():
        raise InputError(f"--classifier needs covariates ({needed}) from {participants}: none")
    table = read_participants(participants)
    ids = [f"sub-{label}" for label in labels]
    absent = [p for p in ids if p not in table.index]
    if absent:
        raise InputError(f"--classifier: {absent[0]} is not in {participants} ({needed})")
    columns = tuple(c.column for c in spec.covariates)
    _, values, _ = parse_covariates(table.loc[ids], columns, spec.covariates)
    for column in columns:
        lacking = values.index[values[column].isna()]
        if len(lacking):
            raise InputError(
                f"--classifier: {lacking[0]} has no {column} in participants.tsv, which the "
                "model needs"
            )


def measures_file(output_dir: Path, subject: SubjectInputs) -> Path:
    """The participant's ``desc-anat_measures.tsv``, named from its processed T1w."""
    if not subject.has_anatomy:
        raise InputError(
            f"sub-{subject.label} has no T1w, hence no measures table: --classifier cannot "
            "predict it (leave it out with --participant-label)"
        )
    return output_dir / derivative_path(subject.t1w, "measures", "anat", ".tsv", desc="anat")


def write_participant_predictions(
    output_dir: Path, bids_dir: Path, bundle: Path, measures_files: list[Path], threads: int = 1
) -> list[Path]:
    """Predict each participant of ``measures_files`` (its ``desc-anat_measures.tsv``) from
    its results in ``output_dir``, as ``bids_dl-classify predict`` does, and add the prediction
    to that table; ``InputError`` names a participant that lacks a feature."""
    from bids_dl.models.card import weights_sha256
    from bids_dl.models.classifier_bundle import load_classifier
    from bids_dl.models.classifier_estimators import limited_threads

    card, spec, atlas = read_bundle(bundle, "--classifier")
    participants = bids_dir / "participants.tsv" if spec.covariates else None
    classifier = load_classifier(bundle)
    sha256 = weights_sha256(bundle)
    written = []
    for path in measures_files:
        if not path.is_file():
            raise InputError(f"{path} does not exist: --classifier adds its prediction there")
        entities = parse_entities(path)
        session_spec = replace(spec, session=entities.get("ses"))
        plan = plan_prediction(output_dir, session_spec, atlas, participants, (entities["sub"],))
        cohort = load_cohort(plan)
        with limited_threads(threads):
            prediction = float(classifier.predict(cohort.tabular, cohort.images)[0])
        written.append(add_prediction(path, prediction, card, spec.target, sha256))
    return written


def add_prediction(path: Path, prediction: float, card, target, sha256: str) -> Path:
    """Rewrite a participant's measures table (atomically) with ``<column>_predicted`` and
    ``<column>_model``, and their entries in its JSON data dictionary."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    predicted, model = f"{target.column}_predicted", f"{target.column}_model"
    table[predicted] = f"{prediction:.6g}"
    table[model] = f"{card.name} {card.version}"
    write_tsv(table, path)
    sidecar = path.with_suffix(".json")
    dictionary = {c: MEASURES_DICTIONARY[c] for c in table.columns if c in MEASURES_DICTIONARY}
    if sidecar.is_file():
        dictionary.update(json.loads(sidecar.read_text(encoding="utf-8")))
    headline = card.metrics.get("headline", "")
    if target.task == "classification":
        what = (
            f"probability that {target.column} is {target.class_names[1]!r} (class 1; "
            f"{target.class_names[0]!r} is class 0, below 0.5)"
        )
    else:
        what = f"{target.column}, predicted"
    dictionary[predicted] = {
        "Description": f"{what}, from this participant's results by the model bundle "
        f"{card.name} {card.version} ({headline})"
    }
    dictionary[model] = {
        "Description": f"the model bundle (name and bids_dl version) that made {predicted}; "
        f"weights sha256 {sha256}"
    }
    write_json_atomic(dictionary, sidecar)
    return path
