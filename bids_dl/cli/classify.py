"""``bids_dl-classify``: group-level classification and outcome prediction from any BIDS
derivatives folder and a ``participants.tsv``.

``train`` cross-validates every model that applies (nested: hyper-parameters picked inside
each outer training set) and writes ``OUTPUT_DIR/cv_predictions.tsv``, ``metrics.json`` and
``bundle/``, the final model refitted on every participant; ``predict`` applies such a bundle
to a derivatives folder and writes ``OUTPUT_DIR/predictions.tsv``. Exit codes as ``bids_dl``:
0 success, 2 with one line on stderr for a usage error or invalid input, before any work.

The work is :mod:`bids_dl.classify_training`'s, shared with the BIDS-App's group level
(``--classify``): how small cohorts shrink the folds, and how the final model is chosen (the
linear one unless another beats it; ``--final`` overrides), are described there.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from bids_dl import __version__
from bids_dl.classify_features import FeatureOptions
from bids_dl.classify_prediction import check_prediction, run_prediction
from bids_dl.classify_training import MODELS, TrainingOptions, check_training, run_training
from bids_dl.inputs import InputError

PROGRAM = "bids_dl-classify"


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
    "--groups",
    metavar="COLUMN",
    help="a column of participants.tsv whose groups the folds never split (a site, a family, "
    "the image a synthetic participant was made from)  [default: each participant apart]",
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
    help="outer folds of the nested cross-validation (fewer when the smallest class has fewer "
    "participants)",
)
@click.option(
    "--inner-folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="inner folds, which pick the hyper-parameters (fewer when an outer training set is "
    "small; under 2, fixed defaults)",
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
    derivatives = options["derivatives_dir"]
    features = FeatureOptions(
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
        groups=options["groups"],
    )
    settings = TrainingOptions(
        output_dir=options["output_dir"],
        models=options["models"],
        final=options["final"],
        folds=options["folds"],
        inner_folds=options["inner_folds"],
        seed=options["seed"],
        bootstrap=options["bootstrap"],
        threads=options["threads"],
        command=shlex.join([PROGRAM, *sys.argv[1:]]),
    )
    participants = options["participants"] or derivatives / "participants.tsv"
    try:
        training = check_training(derivatives, participants, features, settings)
        run_training(training, report=click.echo)
    except InputError as error:
        fail(str(error))


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
    bundle, derivatives, output = (
        options["bundle"],
        options["derivatives_dir"],
        options["output_dir"],
    )
    participants = options["participants"] or derivatives / "participants.tsv"
    try:
        spec, plan = check_prediction(
            bundle, derivatives, output, participants, options["participant_labels"]
        )
        run_prediction(bundle, spec, plan, output, options["threads"], report=click.echo)
    except InputError as error:
        fail(str(error))
