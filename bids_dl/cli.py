"""Command line: ``bids_dl BIDS_DIR OUTPUT_DIR {participant,group}`` (BIDS-Apps contract).

Exit codes: 0 success; 1 a node failed (the crash files are named); 2 usage error or invalid
input (one line saying why, before any work starts).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from bids_dl import __version__
from bids_dl.config import PLUGINS

# No network at run time: nipype's version check (etelemetry) would try to phone home.
os.environ.setdefault("NIPYPE_NO_ET", "1")

LOGGER = logging.getLogger("bids_dl")
#: Options that take several values separated by spaces, as BIDS-Apps users type them.
MULTI_VALUE_OPTIONS = (
    "--participant-label",
    "--participant_label",
    "--session-label",
    "--analyses",
)


class BidsAppCommand(click.Command):
    """A click command where ``--participant-label 01 02 03`` means three labels.

    click options take one value each, so the extra values are rewritten as repeated options
    before parsing: ``--participant-label 01 --participant-label 02 ...``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_value_options(args))


def expand_multi_value_options(args: list[str]) -> list[str]:
    """Repeat a multi-value option before each of its space-separated values."""
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


def _fail(message: str) -> None:
    click.echo(f"bids_dl: error: {message}", err=True)
    sys.exit(2)


def _setup_logging(verbose: int) -> None:
    """bids_dl's own messages at INFO; nipype's node-by-node log only with -v (it is long)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    logger = logging.getLogger("bids_dl")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    logger.propagate = False


@click.command(
    cls=BidsAppCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: bids_dl /data/bids /data/derivatives/bids_dl participant "
    "--participant-label 01 02 --nprocs 8",
)
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("output_dir", type=click.Path(path_type=Path))
@click.argument("analysis_level", type=click.Choice(["participant", "group"]))
@click.option(
    "--participant-label",
    "--participant_label",
    "participant_label",
    multiple=True,
    help="Participants to process, separated by spaces, with or without 'sub-' "
    "(default: every participant).",
)
@click.option(
    "--session-label", multiple=True, help="Only use these sessions (with or without 'ses-')."
)
@click.option(
    "--bids-filter-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON file of pybids queries per input, e.g. {"t1w": {"acquisition": "mprage"}}.',
)
@click.option(
    "-w",
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("work"),
    show_default=True,
    help="Intermediate results; reuse it to resume a run without recomputing finished steps.",
)
@click.option(
    "--nprocs",
    "--n-cpus",
    "nprocs",
    type=click.IntRange(min=1),
    help="CPUs for the whole run (default: all).",
)
@click.option(
    "--omp-nthreads",
    type=click.IntRange(min=1),
    help="Threads per process (default: min(nprocs, 8)).",
)
@click.option("--mem-gb", type=click.FloatRange(min=0.5), help="Memory the run may use, in GB.")
@click.option(
    "--resource-monitor",
    is_flag=True,
    help="Record each node's time and peak memory (sub-X/log/<run>/resources.tsv, the report).",
)
@click.option(
    "--plugin",
    type=click.Choice(PLUGINS),
    default="MultiProc",
    show_default=True,
    help="Nipype execution plugin.",
)
@click.option(
    "--plugin-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML/JSON file: plugin, plugin_args (e.g. sbatch_args: '-p short') and "
    "gpu_sbatch_args (added for the deep-learning nodes, e.g. '-p gpu --gres=gpu:1').",
)
@click.option(
    "--analyses",
    multiple=True,
    help="Analyses to run, separated by spaces (default: every one whose inputs exist: tumor "
    "where a contrast-enhanced T1w exists, wmh where a FLAIR exists and tumor does not run, "
    "since edema would pass for white-matter lesions). Known: anat, tumor, wmh. Named here, "
    "tumor runs on a FLAIR or ce-T1w, wmh on a FLAIR, and a subject without them is an error.",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where deep-learning nodes run: auto uses CUDA when present.",
)
@click.option(
    "--skull-strip-t1w",
    type=click.Choice(["auto", "force", "skip"]),
    default="auto",
    show_default=True,
    help="Brain extraction of the T1w: auto skips it for images that are already "
    "skull-stripped (one value on most of its faces, a brain-sized rest), force always runs "
    "it, skip never does (the mask is then the voxels that differ from the background).",
)
@click.option(
    "--brain-extraction-model",
    default="auto",
    show_default=True,
    help="Brain extraction: 'template' (classical registration baseline), a model bundle "
    "folder or shipped name, or 'auto' (the shipped brain_mask model when there is one).",
)
@click.option(
    "--segmentation-model",
    default="auto",
    show_default=True,
    help="Segmentation: 'atropos' (classical GM/WM/CSF only), a structures model bundle folder "
    "or shipped name, or 'auto' (the shipped structures model when there is one).",
)
@click.option(
    "--tumor-model",
    default="auto",
    show_default=True,
    help="Glioma segmentation: a tumor model bundle folder or shipped name, 'auto' (the shipped "
    "tumor model) or 'none'.",
)
@click.option(
    "--wmh-model",
    default="auto",
    show_default=True,
    help="White-matter hyperintensity segmentation: a wmh model bundle folder or shipped name, "
    "'auto' (the shipped wmh model) or 'none'.",
)
@click.option(
    "--skip-bids-validation", is_flag=True, help="Do not run the BIDS validator on the input."
)
@click.option("--stop-on-first-crash", is_flag=True, help="Stop at the first failed node.")
@click.option(
    "--reports-only", is_flag=True, help="Only rewrite the reports from existing outputs."
)
@click.option(
    "--boilerplate-only", is_flag=True, help="Only write the methods text (logs/CITATION.md)."
)
@click.option("--dry-run", is_flag=True, help="Print what would run for whom, then exit.")
@click.option("--sloppy", is_flag=True, help="Faster, lower-quality registration (testing only).")
@click.option(
    "--random-seed",
    type=click.IntRange(min=1),
    help="Seed of ANTs' random sampling (registration); with --omp-nthreads 1 reruns give "
    "the same registration. Default: ANTs' own, which varies between runs.",
)
@click.option("-v", "--verbose", count=True, help="More messages (-v info, -vv debug).")
@click.version_option(__version__, prog_name="bids_dl")
def main(**options) -> None:
    """Preprocess and analyse a BIDS dataset; write BIDS derivatives and HTML reports.

    BIDS_DIR is the input dataset (never written to), OUTPUT_DIR the derivatives folder
    (outside BIDS_DIR), and the analysis level is 'participant' (process subjects) or 'group'
    (gather every subject's tables into one, after the participant level).
    """
    _setup_logging(options["verbose"])
    from bids_dl.inputs import InputError

    try:
        config, subjects = _prepare(options)
    except InputError as error:
        _fail(str(error))
    if options["analysis_level"] == "group":
        _run_group(config)
        return
    sys.exit(_run_participant(config, subjects))


def _prepare(options: dict):
    """Check the input and build the run's :class:`~bids_dl.config.Config` (InputError if bad)."""
    from bids_dl.config import ANALYSES, Config, ExecutionSettings, NipypeSettings, WorkflowSettings
    from bids_dl.inputs import (
        InputError,
        check_folders,
        collect_inputs,
        load_filters,
        plan_analyses,
        plan_skull_stripping,
        strip_prefix,
        validate_dataset,
    )

    bids_dir, output_dir = options["bids_dir"], options["output_dir"]
    work_dir = options["work_dir"].absolute()
    check_folders(bids_dir, output_dir, work_dir)
    unknown = sorted(set(options["analyses"]) - set(ANALYSES))
    if unknown:
        raise InputError(f"unknown analysis {', '.join(unknown)} (known: {', '.join(ANALYSES)})")
    nprocs = options["nprocs"] or os.cpu_count() or 1
    plugin = {"plugin": options["plugin"], "plugin_args": {}, "gpu_sbatch_args": ""}
    if options["plugin_config"]:
        plugin = _read_plugin_config(options["plugin_config"], options["plugin"])
    use_gpu = _local_gpu(options["device"], plugin["plugin"])
    participants = strip_prefix(options["participant_label"], "sub")
    config = Config(
        execution=ExecutionSettings(
            bids_dir=bids_dir.absolute(),
            output_dir=output_dir.absolute(),
            work_dir=work_dir,
            participant_labels=participants,
            session_labels=strip_prefix(options["session_label"], "ses"),
            bids_filters=load_filters(options["bids_filter_file"]),
            analyses=list(options["analyses"]) or list(ANALYSES),
            analyses_requested=bool(options["analyses"]),
            skip_bids_validation=options["skip_bids_validation"],
            dry_run=options["dry_run"],
            boilerplate_only=options["boilerplate_only"],
            reports_only=options["reports_only"],
            verbose=options["verbose"],
        ),
        nipype=NipypeSettings(
            plugin=plugin["plugin"],
            plugin_args=plugin["plugin_args"],
            gpu_sbatch_args=plugin["gpu_sbatch_args"],
            use_gpu=use_gpu,
            resource_monitor=options["resource_monitor"],
            nprocs=nprocs,
            omp_nthreads=options["omp_nthreads"] or min(nprocs, 8),
            mem_gb=options["mem_gb"],
            stop_on_first_crash=options["stop_on_first_crash"],
        ),
        workflow=WorkflowSettings(
            device=options["device"],
            sloppy=options["sloppy"],
            random_seed=options["random_seed"],
            skull_strip_t1w=options["skull_strip_t1w"],
            brain_extraction_bundle=_model_bundle(
                options["brain_extraction_model"],
                "--brain-extraction-model",
                task="brain_mask",
                classical="template",
            ),
            segmentation_bundle=_model_bundle(
                options["segmentation_model"],
                "--segmentation-model",
                task="structures",
                classical="atropos",
            ),
            tumor_bundle=_model_bundle(
                options["tumor_model"], "--tumor-model", task="tumor", classical="none"
            ),
            wmh_bundle=_model_bundle(
                options["wmh_model"], "--wmh-model", task="wmh", classical="none"
            ),
        ),
    )
    if options["analysis_level"] == "group":
        return config, {}
    if not options["skip_bids_validation"] and not options["reports_only"]:
        for code in validate_dataset(bids_dir, participants):
            LOGGER.info("BIDS validator warning: %s", code)
    subjects = collect_inputs(
        bids_dir,
        participants,
        config.execution.session_labels,
        config.execution.bids_filters,
        database_dir=work_dir / "bids_db",
    )
    plan_analyses(
        subjects,
        config.execution.analyses,
        config.execution.analyses_requested,
        {"tumor": config.workflow.tumor_bundle, "wmh": config.workflow.wmh_bundle},
    )
    plan_skull_stripping(subjects, config.workflow.skull_strip_t1w)
    return config, subjects


def _model_bundle(choice: str, option: str, task: str, classical: str) -> str | None:
    """Resolve a model option to a checked bundle folder, or None for the classical method.

    ``auto`` is the shipped bundle of ``task`` when there is one; ``classical`` names the
    baseline; anything else is a shipped name or a bundle folder whose card is for ``task``.
    """
    from bids_dl.inputs import InputError
    from bids_dl.models.bundle import BundleError, load_card
    from bids_dl.models.registry import find_bundle, shipped_bundles

    if choice == classical:
        return None
    if choice == "auto":
        shipped = shipped_bundles().get(task)
        return str(shipped) if shipped else None
    try:
        folder = find_bundle(choice)
        card = load_card(folder)
    except BundleError as error:
        raise InputError(f"{option}: {error}") from error
    if card.task != task:
        raise InputError(f"{option}: {folder} is a {card.task!r} model, not a {task!r} model")
    return str(folder.absolute())


def _local_gpu(device: str, plugin: str) -> bool:
    """Whether the deep-learning nodes run on a GPU of this machine (InputError if asked for
    and absent). Under Slurm the GPUs are on the compute nodes: ``auto`` decides there."""
    from bids_dl.execution import SLURM_PLUGINS
    from bids_dl.inputs import InputError

    if device == "cpu" or plugin in SLURM_PLUGINS:
        return False
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.cuda.is_available()


def _read_plugin_config(path: Path, plugin: str) -> dict:
    """``--plugin-config``: ``plugin``, ``plugin_args`` and ``gpu_sbatch_args`` (YAML/JSON)."""
    import yaml

    from bids_dl.inputs import InputError

    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise InputError(f"--plugin-config {path}: not valid YAML ({problem}{where})") from error
    known = {"plugin", "plugin_args", "gpu_sbatch_args"}
    if not isinstance(content, dict) or set(content) - known:
        raise InputError(
            f"--plugin-config {path}: expected a mapping with keys among {sorted(known)}"
        )
    settings = {
        "plugin": content.get("plugin", plugin),
        "plugin_args": content.get("plugin_args") or {},
        "gpu_sbatch_args": content.get("gpu_sbatch_args") or "",
    }
    if settings["plugin"] not in PLUGINS:
        raise InputError(f"--plugin-config {path}: plugin must be one of {', '.join(PLUGINS)}")
    if not isinstance(settings["plugin_args"], dict):
        raise InputError(f"--plugin-config {path}: plugin_args must be a mapping")
    return settings


def _run_participant(config, subjects) -> int:
    """Build and run the participant workflow; always write reports and the description."""
    from bids_dl.boilerplate import methods_markdown
    from bids_dl.derivatives import (
        write_bidsignore,
        write_dataset_description,
        write_structure_lookup,
        write_text_atomic,
        write_tissue_lookup,
        write_tumor_lookup,
    )
    from bids_dl.templates import write_template_files

    execution = config.execution
    if execution.dry_run:
        _print_plan(config, subjects)
        return 0
    from bids_dl.execution import (
        check_resources,
        configure_nipype,
        request_node_resources,
        run_workflow,
    )
    from bids_dl.inputs import InputError
    from bids_dl.workflows.base import init_bids_dl_wf

    configure_nipype(config)
    workflow = init_bids_dl_wf(config, subjects)
    try:
        check_resources(config, workflow)
    except InputError as error:
        _fail(str(error))
    request_node_resources(config, workflow)
    logs = execution.output_dir / "logs"
    write_text_atomic(methods_markdown(workflow), logs / "CITATION.md")
    if execution.boilerplate_only:
        click.echo(f"Methods text written to {logs / 'CITATION.md'}")
        return 0
    write_text_atomic(config.to_json(), logs / f"config-{execution.run_uuid}.json")
    write_dataset_description(execution.output_dir, execution.bids_dir)
    write_bidsignore(execution.output_dir)
    write_tissue_lookup(execution.output_dir)
    if config.workflow.segmentation_bundle:
        write_structure_lookup(execution.output_dir)
    if any("tumor" in inputs.analyses for inputs in subjects.values()):
        write_tumor_lookup(execution.output_dir)
    status = 0
    if not execution.reports_only:
        write_template_files(config.template_dir)
        try:
            run_workflow(config, workflow)
        except KeyboardInterrupt:
            click.echo(
                "bids_dl: interrupted; finished steps stay in the work dir: run the same "
                "command again to resume",
                err=True,
            )
            os._exit(130)  # without waiting for the worker pool's threads, which can hang
        except Exception as error:  # nipype raises RuntimeError, plugins other types
            status = 1
            LOGGER.debug("workflow failed", exc_info=error)
        if config.nipype.plugin == "SLURMGraph" and not status:
            click.echo(
                "The jobs of the whole graph were submitted to Slurm; when they have finished, "
                "write the reports with the same command and --reports-only."
            )
            return 0
    if config.nipype.resource_monitor:
        _write_resource_tables(config, subjects, workflow)
    reports = _write_reports(config, subjects, workflow)
    crashes = _crash_files(config, subjects)
    if status or crashes:
        listing = "; ".join(str(c) for c in crashes) or "see the log in " + str(logs)
        click.echo(
            f"bids_dl: error: {len(crashes)} node(s) failed; crash files: {listing}", err=True
        )
        return 1
    for report in reports:
        click.echo(f"Report: {report}")
    return 0


def _write_resource_tables(config, subjects, workflow) -> None:
    """Each subject's nodes' time and peak memory: ``sub-X/log/<run>/resources.tsv``."""
    from bids_dl.execution import node_resources, write_resource_table
    from bids_dl.workflows.base import subject_log_dir

    for label in subjects:
        name = f"single_subject_{label}_wf"
        rows = node_resources(workflow.get_node(name), Path(workflow.base_dir, workflow.name, name))
        folder = subject_log_dir(config.execution.output_dir, label, config.execution.run_uuid)
        write_resource_table(rows, folder / "resources.tsv")


def _crash_files(config, subjects) -> list[Path]:
    from bids_dl.workflows.base import subject_log_dir

    crashes = []
    for label in subjects:
        folder = subject_log_dir(config.execution.output_dir, label, config.execution.run_uuid)
        crashes.extend(sorted(folder.glob("crash-*")))
    return crashes


def _write_reports(config, subjects, workflow) -> list[Path]:
    """One report per subject; its methods come from that subject's part of ``workflow``."""
    from bids_dl.boilerplate import methods_text
    from bids_dl.reports.participant import write_participant_report

    reports = []
    for label, inputs in subjects.items():
        methods, references = methods_text(workflow.get_node(f"single_subject_{label}_wf"))
        source = Path(inputs.t1w).relative_to(config.execution.bids_dir).as_posix()
        reports.append(
            write_participant_report(
                config.execution.output_dir, label, source, methods, references
            )
        )
    return reports


def _print_plan(config, subjects) -> None:
    execution = config.execution
    click.echo(f"bids_dl {__version__} dry run: nothing will be computed or written.")
    click.echo(f"  input:    {execution.bids_dir}")
    click.echo(f"  output:   {execution.output_dir}")
    click.echo(f"  work dir: {execution.work_dir}")
    click.echo(f"  analyses: {', '.join(execution.analyses)}")
    click.echo(f"  plugin:   {json.dumps(config.nipype.plugin_settings())}")
    for label, inputs in subjects.items():
        reference = "ce-T1w" if inputs.reference_is_contrast_enhanced else "T1w"
        stripped = " (already skull-stripped)" if inputs.skull_stripped else ""
        click.echo(
            f"  sub-{label}: {reference} "
            f"{Path(inputs.t1w).relative_to(execution.bids_dir)}{stripped}"
        )
        for kind, files in inputs.files.items():
            if files and files[0] != inputs.t1w:
                click.echo(f"           {kind}: {Path(files[0]).relative_to(execution.bids_dir)}")
        click.echo(f"           runs: {', '.join(inputs.analyses)}")


def _run_group(config) -> None:
    from bids_dl.derivatives import write_bidsignore
    from bids_dl.group import describe_table, write_group_outputs
    from bids_dl.inputs import InputError

    try:
        table = write_group_outputs(
            config.execution.output_dir, config.execution.participant_labels
        )
    except InputError as error:
        _fail(str(error))
    write_bidsignore(config.execution.output_dir)
    click.echo(f"Group table: {describe_table(table)}")
    click.echo(f"Group report: {config.execution.output_dir / 'group.html'}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--subjects", "n_subjects", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option("--small", is_flag=True, help="2 mm voxels instead of 1 mm (fast tests).")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option(
    "--lesions/--no-lesions",
    default=True,
    show_default=True,
    help="Add a subject with a simulated glioma and one with white-matter hyperintensities.",
)
def sample_main(output_dir: Path, n_subjects: int, small: bool, seed: int, lesions: bool) -> None:
    """Write the sample BIDS dataset (simulated from the MNI152 template) to OUTPUT_DIR."""
    from bids_dl.sample import write_sample_dataset

    if output_dir.exists() and any(output_dir.iterdir()):
        _fail(f"{output_dir} exists and is not empty; choose a new folder")
    write_sample_dataset(
        output_dir,
        n_subjects=n_subjects,
        voxel_mm=2.0 if small else 1.0,
        seed=seed,
        lesions=lesions,
    )
    click.echo(f"Sample BIDS dataset written to {output_dir}")
