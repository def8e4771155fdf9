"""The ``bids_dl`` command's arguments and options, grouped by topic as fMRIPrep's.

click has neither option groups nor options that take several space-separated values, which
BIDS-Apps users type (``--participant-label 01 02 03``); :class:`BidsAppCommand` adds both.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from bids_dl import __version__
from bids_dl.config import CLASSIFY_MODELS, NETWORK_METHODS, PET_REFERENCE_REGIONS, PLUGINS

#: Options that take several values separated by spaces, as BIDS-Apps users type them.
MULTI_VALUE_OPTIONS = (
    "--participant-label",
    "--participant_label",
    "--session-label",
    "--analyses",
    "--network-methods",
    "--features",
    "--image-features",
    "--covariates",
    "--classify-models",
)
FILTERING = "Options for filtering BIDS queries"
PERFORMANCE = "Options to handle performance"
WORKFLOW = "Workflow configuration"
MODELS = "Deep-learning models"
CLASSIFICATION = "Classification and outcome prediction"
SUBSET = "Options for running a subset of the workflow"
#: The heading of options without a group (help, version...), listed last.
OTHER = "Other options"


def fail(message: str) -> None:
    """A usage error or an invalid input: one line on stderr, exit code 2."""
    click.echo(f"bids_dl: error: {message}", err=True)
    sys.exit(2)


class GroupedOption(click.Option):
    """A click option listed under a heading (``group``) in ``--help``."""

    def __init__(self, *args, group: str = OTHER, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class BidsAppCommand(click.Command):
    """A click command where ``--participant-label 01 02 03`` means three labels, and whose
    ``--help`` lists the options under their topic's heading."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_value_options(args))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for parameter in self.get_params(ctx):
            record = parameter.get_help_record(ctx)
            if isinstance(parameter, click.Option) and record is not None:
                groups.setdefault(getattr(parameter, "group", OTHER), []).append(record)
        groups[OTHER] = groups.pop(OTHER, [])
        for title, records in groups.items():
            with formatter.section(title):
                formatter.write_dl(records)


def expand_multi_value_options(args: list[str]) -> list[str]:
    """Repeat a multi-value option before each of its space-separated values.

    click options take one value each, so ``--participant-label 01 02`` is rewritten as
    ``--participant-label 01 --participant-label 02`` before parsing.
    """
    expanded: list[str] = []
    current: str | None = None
    for arg in args:
        if arg in MULTI_VALUE_OPTIONS:
            current = arg
            expanded.append(arg)
            continue
        if arg.startswith("-"):
            current = None
        elif current is not None and expanded[-1] != current:
            expanded.append(current)
        expanded.append(arg)
    return expanded


def _option(*names: str, group: str, **attrs) -> Callable:
    return click.option(*names, cls=GroupedOption, group=group, **attrs)


def _flag(*names: str, group: str, help: str) -> Callable:
    return _option(*names, is_flag=True, group=group, help=help)


def _model_option(name: str, help: str) -> Callable:
    return _option(name, default="auto", show_default=True, group=MODELS, help=help)


#: The arguments and options, in the order ``--help`` lists them within each group.
PARAMETERS = (
    click.argument("bids_dir", type=click.Path(path_type=Path)),
    click.argument("output_dir", type=click.Path(path_type=Path)),
    click.argument("analysis_level", type=click.Choice(["participant", "group"])),
    _option(
        "--participant-label",
        "--participant_label",
        "participant_label",
        multiple=True,
        group=FILTERING,
        help="Participants to process, separated by spaces, with or without 'sub-' "
        "(default: every participant).",
    ),
    _option(
        "--session-label",
        multiple=True,
        group=FILTERING,
        help="Only use these sessions (with or without 'ses-').",
    ),
    _option(
        "--bids-filter-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        group=FILTERING,
        help='JSON file of pybids queries per input, e.g. {"t1w": {"acquisition": "mprage"}}.',
    ),
    _flag(
        "--skip-bids-validation",
        group=FILTERING,
        help="Do not run the BIDS validator on the input.",
    ),
    _option(
        "--nprocs",
        "--n-cpus",
        "nprocs",
        type=click.IntRange(min=1),
        group=PERFORMANCE,
        help="CPUs for the whole run (default: all).",
    ),
    _option(
        "--omp-nthreads",
        type=click.IntRange(min=1),
        group=PERFORMANCE,
        help="Threads per process (default: min(nprocs, 8)).",
    ),
    _option(
        "--mem-gb",
        type=click.FloatRange(min=0.5),
        group=PERFORMANCE,
        help="Memory the run may use, in GB.",
    ),
    _option(
        "--plugin",
        type=click.Choice(PLUGINS),
        default="MultiProc",
        show_default=True,
        group=PERFORMANCE,
        help="Nipype execution plugin.",
    ),
    _option(
        "--plugin-config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        group=PERFORMANCE,
        help="YAML/JSON file: plugin, plugin_args (e.g. sbatch_args: '-p short') and "
        "gpu_sbatch_args (added for the deep-learning nodes, e.g. '-p gpu --gres=gpu:1').",
    ),
    _flag(
        "--resource-monitor",
        group=PERFORMANCE,
        help="Record each node's time and peak memory (sub-X/log/<run>/resources.tsv, the report).",
    ),
    _option(
        "--analyses",
        multiple=True,
        group=WORKFLOW,
        help="Analyses to run, separated by spaces (default: every one whose inputs exist: "
        "tumor where a contrast-enhanced T1w exists, wmh where a FLAIR exists and tumor does "
        "not run, since edema would pass for white-matter lesions; dwi where a diffusion "
        "series exists; asl where a perf/ ASL series exists; asl runs without a T1w on the ASL "
        "grid; func where a func/ BOLD run exists; pet where a pet/ PET exists, and then an "
        "imputed PET for the participants without one). Known: anat, tumor, wmh, dwi, asl, "
        "func, pet. "
        "Named here, tumor runs on a FLAIR or ce-T1w, wmh on a FLAIR, dwi on every diffusion "
        "series, asl on every ASL series, func on every BOLD run, pet on every PET (imputed "
        "where missing), and a subject without them is an error.",
    ),
    _option(
        "--skull-strip-t1w",
        type=click.Choice(["auto", "force", "skip"]),
        default="auto",
        show_default=True,
        group=WORKFLOW,
        help="Brain extraction of the T1w: auto skips it for images that are already "
        "skull-stripped (one value on most of its faces, a brain-sized rest), force always "
        "runs it, skip never does (the mask is then the voxels that differ from the "
        "background).",
    ),
    _flag("--sloppy", group=WORKFLOW, help="Faster, lower-quality registration (testing only)."),
    _option(
        "--random-seed",
        type=click.IntRange(min=1),
        group=WORKFLOW,
        help="Seed of ANTs' random sampling (registration); with --omp-nthreads 1 reruns give "
        "the same registration. Default: ANTs' own, which varies between runs.",
    ),
    _option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        group=MODELS,
        help="Where deep-learning nodes run: auto uses CUDA when present.",
    ),
    _model_option(
        "--brain-extraction-model",
        "Brain extraction: 'template' (classical registration baseline), a model bundle "
        "folder or shipped name, or 'auto' (the shipped brain_mask model when there is one).",
    ),
    _model_option(
        "--segmentation-model",
        "Segmentation: 'atropos' (classical GM/WM/CSF only), a structures model bundle folder "
        "or shipped name, or 'auto' (the shipped structures model when there is one).",
    ),
    _model_option(
        "--tumor-model",
        "Glioma segmentation: a tumor model bundle folder or shipped name, 'auto' (the "
        "shipped tumor model) or 'none'.",
    ),
    _model_option(
        "--wmh-model",
        "White-matter hyperintensity segmentation: a wmh model bundle folder or shipped "
        "name, 'auto' (the shipped wmh model) or 'none'.",
    ),
    _model_option(
        "--dwi-model",
        "DTI maps predicted from few directions: a dti model bundle folder or shipped name, "
        "'auto' (the shipped dti model) or 'none' (the measured tensor fit only; it is always "
        "written).",
    ),
    _model_option(
        "--asl-model",
        "Enhanced CBF from the ASL series (desc-enhanced_cbf): an asl model bundle folder or "
        "shipped name, 'auto' (the shipped asl model when there is one) or 'none' (the "
        "measured CBF only; it is always written).",
    ),
    _model_option(
        "--networks-model",
        "Group level: functional networks found by a deep model trained on the group's own "
        "BOLD runs (desc-deep_components): a networks model bundle folder or shipped name, "
        "'auto' (the shipped networks model) or 'none' (the baselines only).",
    ),
    _model_option(
        "--pet-imputation",
        "A PET predicted from the T1w for participants without one (desc-imputed_pet, "
        "SYNTHETIC: the shipped model is trained on simulated data): a pet model bundle folder "
        "or shipped name, 'auto' (the shipped pet model, where the PET is missing), 'always' "
        "(the shipped model for every participant, measured PET or not: for evaluation) or "
        "'none'.",
    ),
    _option(
        "--pet-window",
        nargs=2,
        type=click.FloatRange(min=0),
        group=WORKFLOW,
        help="PET: START END, minutes after injection, summed into the static image that SUV "
        "and SUVR come from (default: the late frames, those starting in the last third of "
        "the acquisition).",
    ),
    _option(
        "--pet-reference",
        type=click.Choice(PET_REFERENCE_REGIONS),
        default=PET_REFERENCE_REGIONS[0],
        show_default=True,
        group=WORKFLOW,
        help="PET: the SUVR reference region, from the structures model: cerebellar grey "
        "matter, the whole cerebellum, or the brain stem (the model has no separate pons).",
    ),
    _flag(
        "--pet-suv",
        group=WORKFLOW,
        help="PET: require SUV; a PET whose sidecar or participants.tsv lacks the dose, decay "
        "correction or body weight is then an error (without it, SUV is written where they "
        "exist; SUVR needs none of them).",
    ),
    _option(
        "--network-methods",
        multiple=True,
        type=click.Choice(NETWORK_METHODS),
        group=WORKFLOW,
        help="Group level: decompositions of the BOLD runs into networks, separated by spaces "
        "(default: deep canica dictlearning; canica and dictlearning are nilearn's).",
    ),
    _option(
        "--network-components",
        type=click.IntRange(min=2, max=100),
        group=WORKFLOW,
        help="Group level: networks per decomposition (default: the deep model chooses the "
        "number by stability across restarts; the baselines use the same number).",
    ),
    _option(
        "--dummy-scans",
        type=click.IntRange(min=0),
        group=WORKFLOW,
        help="Initial BOLD volumes to flag as non-steady-state (default: detected from the "
        "global signal, as fMRIPrep does).",
    ),
    _option(
        "--dwi-denoise",
        type=click.Choice(["auto", "mppca", "none"]),
        default="auto",
        show_default=True,
        group=WORKFLOW,
        help="MP-PCA denoising of each diffusion series before anything else (dipy): auto "
        "applies it to series of at least 12 volumes (with fewer it can hardly tell noise "
        "from signal), mppca always, none never.",
    ),
    _option(
        "--classify",
        metavar="COLUMN",
        group=CLASSIFICATION,
        help="Group level: predict this column of BIDS_DIR/participants.tsv from the "
        "participants' results in OUTPUT_DIR (nested cross-validation of each model, bootstrap "
        "intervals, the final model's bundle; OUTPUT_DIR/group/classify-<column>/ and a section "
        "of group.html). 0/1 or two text values: a classification; other numbers: a regression "
        "(or a classification with --threshold).",
    ),
    _option(
        "--threshold",
        type=float,
        group=CLASSIFICATION,
        help="With --classify of a numeric column: class 1 is COLUMN >= THRESHOLD.",
    ),
    _option(
        "--features",
        multiple=True,
        metavar="PREFIX",
        group=CLASSIFICATION,
        help="With --classify: the columns of the participants' *_measures.tsv that start with "
        "these, separated by spaces (e.g. left_hippocampus total_intracranial wmh_mm3).",
    ),
    _option(
        "--image-features",
        multiple=True,
        metavar="PATTERN",
        group=CLASSIFICATION,
        help="With --classify: maps by BIDS entities and suffix, one per participant on one "
        "grid (e.g. space-MNI152NLin2009cAsym_desc-wmh_mask); read by the cnn model.",
    ),
    _option(
        "--covariates",
        multiple=True,
        metavar="COLUMN",
        group=CLASSIFICATION,
        help="With --classify: participants.tsv columns added as features (numbers, 89+ read as "
        "89, or two text values coded 0/1 in sorted order); participants without one are left "
        "out.",
    ),
    _option(
        "--classify-models",
        multiple=True,
        type=click.Choice(CLASSIFY_MODELS),
        group=CLASSIFICATION,
        help="With --classify: models to cross-validate, separated by spaces (default: every one "
        "that applies: linear and mlp, svm for a regression, cnn with one --image-features). "
        "The final model is linear unless another beats it (paired-bootstrap interval of the "
        "AUC or r difference above 0).",
    ),
    _option(
        "--folds",
        type=click.IntRange(min=2),
        group=CLASSIFICATION,
        help="With --classify: outer folds of the nested cross-validation (default: 5; fewer "
        "when the smallest class has fewer participants, and no inner search of the "
        "hyper-parameters where an outer training set is too small).",
    ),
    _option(
        "--classify-groups",
        metavar="COLUMN",
        group=CLASSIFICATION,
        help="With --classify: a participants.tsv column whose groups the cross-validation "
        "folds never split (a site, a family, the image a synthetic participant was made "
        "from); default: each participant apart.",
    ),
    _option(
        "--classifier",
        type=click.Path(path_type=Path),
        metavar="BUNDLE",
        group=CLASSIFICATION,
        help="Participant level: after the run, add each participant's prediction by this "
        "classify bundle (bundle/ of --classify or bids_dl-classify train) to its "
        "desc-anat_measures.tsv: <column>_predicted and <column>_model.",
    ),
    _flag("--reports-only", group=SUBSET, help="Only rewrite the reports from existing outputs."),
    _flag(
        "--boilerplate-only", group=SUBSET, help="Only write the methods text (logs/CITATION.md)."
    ),
    _flag("--dry-run", group=SUBSET, help="Print what would run for whom, then exit."),
    _option(
        "-w",
        "--work-dir",
        type=click.Path(path_type=Path),
        default=Path("work"),
        show_default=True,
        group=OTHER,
        help="Intermediate results; reuse it to resume a run without recomputing finished steps.",
    ),
    _flag("--stop-on-first-crash", group=OTHER, help="Stop at the first failed node."),
    _option(
        "-v",
        "--verbose",
        count=True,
        group=OTHER,
        help="More messages: -v also lists steps started and reused, and nipype's log; -vv debug.",
    ),
    _flag("-q", "--quiet", group=OTHER, help="Errors only: no progress lines, no summary."),
    click.version_option(__version__, prog_name="bids_dl"),
)


def bids_app_command(function: Callable) -> BidsAppCommand:
    """Make ``function`` the ``bids_dl`` command: it receives every option by name."""
    for parameter in reversed(PARAMETERS):
        function = parameter(function)
    return click.command(
        cls=BidsAppCommand,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
        epilog="Example: bids_dl /data/bids /data/derivatives/bids_dl participant "
        "--participant-label 01 02 --nprocs 8",
    )(function)
