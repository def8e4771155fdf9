"""``bids_dl-classify``: group-level classification and outcome prediction from any BIDS
derivatives folder and a ``participants.tsv``.

``train`` cross-validates every model that applies (nested: hyper-parameters picked inside
each outer training set) and writes ``OUTPUT_DIR/cv_predictions.tsv``, ``metrics.json`` and
``bundle/``, the final model refitted on every participant; ``predict`` applies such a bundle
to a derivatives folder and writes ``OUTPUT_DIR/predictions.tsv``. Exit codes as ``bids_dl``:
0 success, 2 with one line on stderr for a usage error or invalid input, before any work.

The final model is the linear one unless another model beats it: the 95 % paired-bootstrap
interval of its difference to the linear model in the primary metric (AUC, or Pearson's r
for a regression) lies above 0. Among several that do, the one with the best estimate wins.
A simple model that is as good is easier to trust, explain and reuse (``--final`` overrides).
"""

from __future__ import annotations

import io
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pandas as pd

from bids_dl import __version__
from bids_dl.classify_features import (
    CohortPlan,
    FeatureOptions,
    FeatureSpec,
    load_cohort,
    plan_prediction,
    plan_training,
)
from bids_dl.derivatives import write_json_atomic, write_nifti_atomic, write_text_atomic
from bids_dl.inputs import InputError, check_writable_folder

PROGRAM = "bids_dl-classify"
#: every model of the core, in the order they are run and listed
MODELS = ("linear", "svm", "mlp", "cnn")
BUNDLE = "bundle"
#: the card's ``inputs`` entry that says how to compute the features again
SPEC_KEY = "feature_spec"
#: the atlas of regional loads, in the bundle beside the card
ATLAS_FILE = "atlas.nii.gz"


def fail(message: str) -> None:
    """An invalid input: one line on stderr, exit code 2."""
    click.echo(f"{PROGRAM}: error: {message}", err=True)
    sys.exit(2)


class MultiValueCommand(click.Command):
    """A command where an option given several times may also take several space-separated
    values (``--models linear mlp``), as BIDS-Apps users type them; give the arguments first."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        names = {
            n for p in self.params if isinstance(p, click.Option) and p.multiple for n in p.opts
        }
        expanded: list[str] = []
        current = None
        for arg in args:
            if arg.startswith("-"):
                current = arg if arg in names else None
            elif current is not None and expanded[-1] != current:
                expanded.append(current)
            expanded.append(arg)
        return super().parse_args(ctx, expanded)


def _path(**kwargs) -> click.Path:
    return click.Path(path_type=Path, **kwargs)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROGRAM)
def main() -> None:
    """Group-level classification and outcome prediction from BIDS derivatives.

    Train: bids_dl-classify train DERIVATIVES_DIR OUTPUT_DIR --target COLUMN [options];
    predict: bids_dl-classify predict BUNDLE DERIVATIVES_DIR OUTPUT_DIR.
    """


@main.command("train", cls=MultiValueCommand)
@click.argument("derivatives_dir", type=_path(exists=True, file_okay=False))
@click.argument("output_dir", type=_path())
@click.option(
    "--participants",
    type=_path(),
    help="participants.tsv with the target and covariates  "
    "[default: DERIVATIVES_DIR/participants.tsv]",
)
@click.option("--target", required=True, help="the column of participants.tsv to predict")
@click.option(
    "--threshold",
    type=float,
    help="classify a numeric target: class 1 is target >= THRESHOLD (without it a numeric "
    "target is a regression, 0/1 or two text values a classification)",
)
@click.option(
    "--features",
    "prefixes",
    multiple=True,
    metavar="PREFIX...",
    help="columns of the participants' *_measures.tsv whose name starts with one of these",
)
@click.option(
    "--image-features",
    "images",
    multiple=True,
    metavar="PATTERN...",
    help="images by BIDS entities and suffix: desc-lesion_mask reads "
    "sub-*/**/sub-*_desc-lesion_mask.nii.gz, other entities allowed (one per participant; "
    "the images of a pattern share one grid)",
)
@click.option(
    "--atlas",
    type=_path(exists=True, dir_okay=False),
    help="label image: the mean of each image feature in each region becomes a feature "
    "<desc>_<region> (a lesion mask's load per territory)",
)
@click.option(
    "--atlas-names",
    type=_path(exists=True, dir_okay=False),
    help="region names: TSV with index and name columns, or 'value name' / 'value|name|...' lines",
)
@click.option(
    "--covariates",
    multiple=True,
    metavar="COLUMN...",
    help="columns of participants.tsv added as features: numbers (89+ reads as 89) or two "
    "text values coded 0/1 in sorted order (sex: F=0, M=1); participants without one are "
    "left out",
)
@click.option(
    "--models",
    multiple=True,
    type=click.Choice(MODELS),
    help="models to cross-validate  [default: every one that applies: linear, mlp (and svm "
    "for a regression) with tabular features, cnn with one image feature]",
)
@click.option(
    "--final",
    type=click.Choice(("auto", *MODELS)),
    default="auto",
    show_default=True,
    help="the model of the bundle; auto: linear unless another beats it (paired-bootstrap "
    "95 % interval of the AUC or r difference above 0)",
)
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="outer folds of the nested cross-validation",
)
@click.option(
    "--inner-folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="inner folds, which pick the hyper-parameters",
)
@click.option(
    "--image-voxel-mm",
    type=click.FloatRange(min=0, min_open=True),
    default=6.0,
    show_default=True,
    help="the cnn reads block means of the images at about this voxel size",
)
@click.option(
    "--participant-label",
    "participant_labels",
    multiple=True,
    metavar="LABEL...",
    help="only these participants (with or without sub-)",
)
@click.option("--session-label", help="only files of this session (ses-<label>)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=100),
    default=2000,
    show_default=True,
    help="resamples of the 95 % bootstrap intervals",
)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
def train(**options) -> None:
    """Cross-validate the models on the participants of DERIVATIVES_DIR that have a --target
    value; write OUTPUT_DIR/cv_predictions.tsv, metrics.json and bundle/ (the final model)."""
    command = shlex.join([PROGRAM, *sys.argv[1:]])
    try:
        plan, models = check_training(options)
    except InputError as error:
        fail(str(error))
    run_training(plan, models, options, command)


def check_training(options: dict) -> tuple[CohortPlan, tuple[str, ...]]:
    """Every check of ``train``, before any image is read: the plan and the models to run."""
    derivatives, output = options["derivatives_dir"], options["output_dir"]
    check_output(derivatives, output)
    participants = options["participants"] or derivatives / "participants.tsv"
    feature_options = FeatureOptions(
        target=options["target"],
        threshold=options["threshold"],
        covariates=options["covariates"],
        prefixes=options["prefixes"],
        images=options["images"],
        atlas=options["atlas"],
        atlas_names=options["atlas_names"],
        image_voxel_mm=options["image_voxel_mm"],
        session=options["session_label"],
        participant_labels=options["participant_labels"],
    )
    plan = plan_training(derivatives, participants, feature_options)
    models = choose_models(plan.spec, options["models"], options["final"])
    plan.spec = replace(plan.spec, keep_images="cnn" in models)
    check_fold_counts(plan, options["folds"], options["inner_folds"])
    return plan, models


def check_output(derivatives: Path, output: Path) -> None:
    """OUTPUT_DIR must be writable and not DERIVATIVES_DIR itself (never written to)."""
    if output.resolve() == derivatives.resolve():
        raise InputError("OUTPUT_DIR is DERIVATIVES_DIR: the input is never written to")
    check_writable_folder("OUTPUT_DIR", output)


def choose_models(spec: FeatureSpec, requested: tuple[str, ...], final: str) -> tuple[str, ...]:
    """The requested models, or every one that applies; refuse one that cannot run."""
    from bids_dl.models.classifier_estimators import model_names

    if "cnn" in (*requested, final) and len(spec.images) > 1:
        raise InputError("the cnn reads one map per participant: give one --image-features")
    # the core's rule reads only these three attributes of a cohort, known before any image
    features = SimpleNamespace(
        tabular=spec.feature_names or None, images=spec.images or None, task=spec.target.task
    )
    applicable = model_names(features)
    for name in (*requested, *([final] if final != "auto" else [])):
        if name in applicable:
            continue
        if name == "cnn":
            raise InputError("model cnn needs --image-features")
        if not spec.feature_names:
            raise InputError(
                f"model {name} needs tabular features: --features, --covariates or --atlas"
            )
        raise InputError(f"model {name} is for a regression only")
    if final != "auto" and requested and final not in requested:
        raise InputError(f"--final {final} is not among --models {' '.join(requested)}")
    return tuple(m for m in MODELS if m in (requested or applicable))


def check_fold_counts(plan: CohortPlan, folds: int, inner_folds: int) -> None:
    """Refuse a class (or a regression cohort) too small for the nested folds: each outer
    training set must still hold ``inner_folds`` of its participants."""
    target, spec = plan.target, plan.spec.target
    if spec.task == "classification":
        counts = {name: int((target == i).sum()) for i, name in enumerate(spec.class_names)}
    else:
        counts = {"participants": len(target)}
    for name, count in counts.items():
        what = "participants" if spec.task == "regression" else f"participants in class {name}"
        if count == 0:
            raise InputError(
                f"--target {spec.column}: no participant in class {name}: a classification "
                "needs two classes"
            )
        kept = count - math.ceil(count / folds)
        if count < folds or kept < inner_folds:
            raise InputError(
                f"--target {spec.column}: {count} {what}, too few for {folds} outer and "
                f"{inner_folds} inner folds (needs {minimum_count(folds, inner_folds)}): "
                "use fewer --folds/--inner-folds"
            )
    if spec.task == "regression" and np.ptp(target) == 0:
        raise InputError(f"--target {spec.column} is the same for every participant")


def minimum_count(folds: int, inner_folds: int) -> int:
    """The fewest participants of a class that nested folds can split."""
    count = folds
    while count - math.ceil(count / folds) < inner_folds:
        count += 1
    return count


@main.command("predict", cls=MultiValueCommand)
@click.argument("bundle", type=_path(exists=True, file_okay=False))
@click.argument("derivatives_dir", type=_path(exists=True, file_okay=False))
@click.argument("output_dir", type=_path())
@click.option(
    "--participants",
    type=_path(),
    help="participants.tsv with the covariates the model needs  "
    "[default: DERIVATIVES_DIR/participants.tsv]",
)
@click.option(
    "--participant-label",
    "participant_labels",
    multiple=True,
    metavar="LABEL...",
    help="only these participants  [default: every sub-* folder]",
)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
def predict(**options) -> None:
    """Apply BUNDLE (OUTPUT_DIR/bundle of a training) to the participants of DERIVATIVES_DIR;
    write OUTPUT_DIR/predictions.tsv."""
    try:
        spec, plan = check_prediction(options)
    except InputError as error:
        fail(str(error))
    run_prediction(options["bundle"], spec, plan, options)


def check_prediction(options: dict) -> tuple[FeatureSpec, CohortPlan]:
    """Every check of ``predict``: the bundle's feature spec (from its card), and the plan."""
    from bids_dl.classify_features import read_atlas
    from bids_dl.models.card import BundleError, load_card

    bundle, derivatives = options["bundle"], options["derivatives_dir"]
    check_output(derivatives, options["output_dir"])
    try:
        card = load_card(bundle)
        spec = FeatureSpec.from_json(card.inputs[SPEC_KEY])
    except BundleError as error:
        raise InputError(f"{error} (BUNDLE: the bundle/ folder that train writes)") from None
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{bundle} is not a {PROGRAM} bundle (its card: {error!r})") from None
    spec = replace(spec, keep_images=card.inputs.get("image_shape") is not None)
    atlas = read_atlas(bundle / ATLAS_FILE, regions=spec.regions) if spec.regions else None
    participants = options["participants"] or derivatives / "participants.tsv"
    plan = plan_prediction(derivatives, spec, atlas, participants, options["participant_labels"])
    return spec, plan


def run_training(plan: CohortPlan, models: tuple[str, ...], options: dict, command: str) -> None:
    """Read the features, cross-validate each model, choose and refit the final one, write."""
    from bids_dl.models.classifier_validation import nested_cv

    start = time.perf_counter()
    left_out = ", ".join(f"{n} {why}" for why, n in plan.left_out.items()) or "none"
    click.echo(f"{len(plan.participant_ids)} participants (left out: {left_out}); reading features")
    cohort = load_cohort(plan)
    timings = {"features_s": elapsed(start)}
    results = {}
    for name in models:
        begin = time.perf_counter()
        try:
            results[name] = nested_cv(
                cohort,
                name,
                outer_folds=options["folds"],
                inner_folds=options["inner_folds"],
                seed=options["seed"],
                threads=options["threads"],
            )
        except ValueError as error:  # a fold the checks could not foresee
            fail(f"{name}: {error}")
        timings[f"{name}_cv_s"] = elapsed(begin)
        click.echo(f"{name}: cross-validated in {timings[f'{name}_cv_s']:.1f} s")
    scores = score_models(results, cohort.task, options["bootstrap"], options["seed"])
    for name, entry in scores.items():
        entry["cross_validation_s"] = timings[f"{name}_cv_s"]
    final, reason = choose_final(scores, options["final"], cohort.task)
    summary = training_summary(plan, cohort, scores, (final, reason), options, command)
    output = options["output_dir"]
    write_cv_predictions(results, plan, output / "cv_predictions.tsv")
    begin = time.perf_counter()
    bundle = save_final_model(cohort, final, plan, options, summary, command)
    timings[f"{final}_final_fit_s"] = elapsed(begin)
    timings["total_s"] = elapsed(start)
    write_json_atomic({**summary, "timings": timings}, output / "metrics.json")
    for line in describe_scores(scores, cohort.task):
        click.echo(line)
    click.echo(f"final model: {final} ({reason}); bundle written to {bundle}")


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 2)


def score_models(results: dict, task: str, samples: int, seed: int) -> dict[str, dict]:
    """Each model's metrics with 95 % bootstrap intervals, and its paired difference to the
    linear model (the same resamples of the participants)."""
    from bids_dl.models.classifier_metrics import bootstrap_intervals, paired_difference

    reference = results.get("linear")
    scores = {}
    for name, cv in results.items():
        entry = {"metrics": bootstrap_intervals(cv.target, cv.prediction, task, samples, seed)}
        if reference is not None and name != "linear":
            entry["difference_to_linear"] = paired_difference(
                cv.target, cv.prediction, reference.prediction, task, samples, seed
            )
        entry["hyperparameters"] = list(cv.hyperparameters)
        entry["fit_seconds_per_fold"] = [round(s, 2) for s in cv.fit_seconds]
        scores[name] = entry
    return scores


def choose_final(scores: dict[str, dict], requested: str, task: str) -> tuple[str, str]:
    """The final model and why: linear unless another's paired-bootstrap interval of the
    primary metric's difference to linear lies above 0 (the best such one)."""
    from bids_dl.models.classifier_metrics import PRIMARY_METRIC

    metric = PRIMARY_METRIC[task]

    def estimate(name: str) -> float:
        value = scores[name]["metrics"][metric]["estimate"]
        return value if np.isfinite(value) else -np.inf

    if requested != "auto":
        return requested, "chosen with --final"
    if "linear" not in scores:
        best = max(scores, key=estimate)
        return best, f"the best {metric} in cross-validation (no linear model to compare with)"
    better = [
        name
        for name, entry in scores.items()
        if name != "linear" and entry["difference_to_linear"][metric]["low"] > 0
    ]
    if not better:
        return "linear", f"no model beats it: no paired-bootstrap interval of {metric} lies above 0"
    best = max(better, key=estimate)
    difference = scores[best]["difference_to_linear"][metric]
    return best, (
        f"its {metric} exceeds linear's by {difference['estimate']:.3f} (95 % interval "
        f"{difference['low']:.3f} to {difference['high']:.3f})"
    )


def describe_scores(scores: dict[str, dict], task: str) -> list[str]:
    """One console line per model: its primary metric and interval."""
    from bids_dl.models.classifier_metrics import PRIMARY_METRIC

    metric = PRIMARY_METRIC[task]
    return [
        f"{name}: {metric} {m['estimate']:.3f} (95 % CI {m['low']:.3f} to {m['high']:.3f})"
        for name, entry in scores.items()
        for m in [entry["metrics"][metric]]
    ]


def write_cv_predictions(results: dict, plan: CohortPlan, path: Path) -> Path:
    """``cv_predictions.tsv`` (participant_id, fold, target, one column per model) and its
    data dictionary. The models share the outer folds (same splitter and seed)."""
    first = next(iter(results.values()))
    table = pd.DataFrame({"participant_id": first.participant_ids, "fold": first.fold})
    table["target"] = first.target
    for name, cv in results.items():
        if not np.array_equal(cv.fold, first.fold):
            table[f"fold_{name}"] = cv.fold
        table[name] = cv.prediction
    target = plan.spec.target
    what = (
        f"probability of class {target.class_names[1]!r}"
        if target.task == "classification"
        else f"predicted {target.column}"
    )
    dictionary = {
        "participant_id": {"Description": "BIDS participant label"},
        "fold": {"Description": "the outer cross-validation fold that held the participant out"},
        "target": {"Description": _target_description(target)},
        **{
            name: {"Description": f"{what} by the {name} model, fitted without this participant"}
            for name in results
        },
    }
    write_tsv(table, path)
    write_json_atomic(dictionary, path.with_suffix(".json"))
    return path


def _target_description(target) -> str:
    if target.task == "regression":
        return f"{target.column} (participants.tsv)"
    classes = ", ".join(f"{i}: {name}" for i, name in enumerate(target.class_names))
    return f"class of {target.column} (participants.tsv): {classes}"


def write_tsv(table: pd.DataFrame, path: Path) -> Path:
    buffer = io.StringIO()
    table.to_csv(buffer, sep="\t", index=False, na_rep="n/a", lineterminator="\n")
    return write_text_atomic(buffer.getvalue(), path)


def training_summary(
    plan: CohortPlan, cohort, scores: dict, final: tuple[str, str], options: dict, command: str
) -> dict:
    """The content of ``metrics.json`` (its timings aside)."""
    from bids_dl.models.classifier_metrics import PRIMARY_METRIC

    spec = plan.spec
    counts = {"participants": len(cohort)}
    if cohort.task == "classification":
        counts.update(
            {
                name: int((cohort.target == i).sum())
                for i, name in enumerate(spec.target.class_names)
            }
        )
    return {
        "command": command,
        "version": __version__,
        "target": spec.target.column,
        "task": cohort.task,
        "threshold": spec.target.threshold,
        "class_names": list(spec.target.class_names),
        "primary_metric": PRIMARY_METRIC[cohort.task],
        "counts": counts,
        "left_out": plan.left_out,
        "top_coded_values_read_as_numbers": plan.top_coded,
        "features": {"tabular": list(spec.feature_names), "images": list(spec.images)},
        "cross_validation": {
            "outer_folds": options["folds"],
            "inner_folds": options["inner_folds"],
            "seed": options["seed"],
            "bootstrap_samples": options["bootstrap"],
            "interval": "95 % percentile bootstrap over participants",
        },
        "models": scores,
        "final": {"model": final[0], "reason": final[1], "bundle": BUNDLE},
    }


def save_final_model(
    cohort, name: str, plan: CohortPlan, options: dict, summary: dict, command: str
) -> Path:
    """Refit model ``name`` on every participant (its grid searched on inner folds) and save
    the bundle: its card holds the feature spec that ``predict`` follows, and its metrics those
    of the nested cross-validation; the atlas, if any, is saved beside it."""
    import nibabel as nb

    from bids_dl.models.classifier_bundle import fit_final, save_classifier

    fitted = fit_final(
        cohort,
        name,
        seed=options["seed"],
        inner_folds=options["inner_folds"],
        threads=options["threads"],
    )
    metric = summary["primary_metric"]
    value = summary["models"][name]["metrics"][metric]
    headline = (
        f"{metric} {value['estimate']:.3f} (95 % CI {value['low']:.3f} to {value['high']:.3f}) "
        f"in nested cross-validation ({options['folds']} outer x {options['inner_folds']} inner "
        f"folds) of {len(cohort)} participants"
    )
    card_extra = {
        "name": f"{cohort.target_name}-{name}",
        "metrics": {"headline": headline, "cross_validation": summary["models"][name]},
        "inputs": {SPEC_KEY: plan.spec.to_json()},
        "training": {
            "command": command,
            "derivatives": str(options["derivatives_dir"].resolve()),
            "final_model_choice": summary["final"]["reason"],
            "cross_validation": summary["cross_validation"],
        },
    }
    folder = save_classifier(options["output_dir"] / BUNDLE, fitted, card_extra)
    if plan.atlas is not None:
        atlas = plan.atlas.image
        labels = np.asarray(atlas.dataobj).astype(np.int32)
        write_nifti_atomic(nb.Nifti1Image(labels, atlas.affine), folder / ATLAS_FILE)
    return folder


def run_prediction(bundle: Path, spec: FeatureSpec, plan: CohortPlan, options: dict) -> None:
    """Read the features, apply the bundle, write ``predictions.tsv`` and its dictionary."""
    from bids_dl.models.classifier_bundle import load_classifier
    from bids_dl.models.classifier_estimators import limited_threads

    classifier = load_classifier(bundle)
    cohort = load_cohort(plan)
    with limited_threads(options["threads"]):
        prediction = classifier.predict(cohort.tabular, cohort.images)
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
    path = options["output_dir"] / "predictions.tsv"
    write_tsv(table, path)
    dictionary = {
        "participant_id": {"Description": "BIDS participant label"},
        "model": {"Description": f"the model of the bundle {bundle.resolve()}"},
        **described,
    }
    write_json_atomic(dictionary, path.with_suffix(".json"))
    click.echo(f"{len(table)} predictions written to {path}")
