"""Applying a trained group-level model: a bundle's card and feature spec read and checked,
the participants' features read as at training, and ``predictions.tsv`` written. Shared by
``bids_dl-classify predict`` and the BIDS-App's ``--classifier``. Errors are
:class:`~bids_dl.inputs.InputError` (one line)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bids_dl.classify_features import CohortPlan, FeatureSpec, load_cohort, plan_prediction
from bids_dl.classify_training import (
    ATLAS_FILE,
    LOGGER,
    SPEC_KEY,
    Report,
    check_output,
    write_tsv,
)
from bids_dl.derivatives import write_json_atomic
from bids_dl.inputs import InputError


def read_bundle(bundle: Path, what: str = "BUNDLE"):
    """A classification bundle's card, feature spec and atlas (None without one)."""
    from bids_dl.classify_images import read_atlas
    from bids_dl.models.card import BundleError, load_card

    try:
        card = load_card(bundle)
    except BundleError as error:
        raise InputError(f"{what}: {error} (the bundle/ folder that a training writes)") from None
    if card.task != "classify":
        raise InputError(f"{what}: {bundle} is a {card.task!r} model, not a classify model")
    try:
        spec = FeatureSpec.from_json(card.inputs[SPEC_KEY])
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{what}: {bundle} has no feature spec on its card ({error!r})") from None
    spec = replace(spec, keep_images=card.inputs.get("image_shape") is not None)
    atlas = read_atlas(bundle / ATLAS_FILE, regions=spec.regions) if spec.regions else None
    return card, spec, atlas


def check_prediction(
    bundle: Path,
    derivatives: Path,
    output: Path,
    participants: Path | None,
    participant_labels: tuple[str, ...] = (),
) -> tuple[FeatureSpec, CohortPlan]:
    """Every check of a prediction: the bundle's feature spec (from its card), and the plan."""
    check_output(derivatives, output)
    _, spec, atlas = read_bundle(bundle)
    plan = plan_prediction(derivatives, spec, atlas, participants, participant_labels)
    return spec, plan


def predict_plan(bundle: Path, plan: CohortPlan, threads: int = 1):
    """The bundle's classifier, the cohort and its predictions (probability of class 1, or the
    predicted value)."""
    from bids_dl.models.card import BundleError
    from bids_dl.models.classifier_bundle import load_classifier
    from bids_dl.models.classifier_estimators import limited_threads

    try:
        classifier = load_classifier(bundle)
    except BundleError as error:
        raise InputError(str(error)) from None
    cohort = load_cohort(plan)
    with limited_threads(threads):
        prediction = classifier.predict(cohort.tabular, cohort.images)
    return classifier, cohort, prediction


def run_prediction(
    bundle: Path,
    spec: FeatureSpec,
    plan: CohortPlan,
    output: Path,
    threads: int = 1,
    report: Report = LOGGER.info,
) -> Path:
    """Read the features, apply the bundle, write ``predictions.tsv`` and its dictionary."""
    classifier, cohort, prediction = predict_plan(bundle, plan, threads)
    target = spec.target
    table = pd.DataFrame(
        {"participant_id": cohort.participant_ids, "model": classifier.card.architecture["name"]}
    )
    if target.task == "classification":
        table["probability"] = prediction
        table["prediction"] = np.where(prediction >= 0.5, *target.class_names[::-1])
        described = {
            "probability": {"Description": f"probability of {target.class_names[1]!r}"},
            "prediction": {"Description": "the more probable class (probability >= 0.5)"},
        }
    else:
        table["prediction"] = prediction
        described = {"prediction": {"Description": f"predicted {target.column}"}}
    path = output / "predictions.tsv"
    write_tsv(table, path)
    dictionary = {
        "participant_id": {"Description": "BIDS participant label"},
        "model": {"Description": f"the model of the bundle {bundle.resolve()}"},
        **described,
    }
    write_json_atomic(dictionary, path.with_suffix(".json"))
    report(f"{len(table)} predictions written to {path}")
    return path
