"""``bids_dl BIDS_DIR OUTPUT_DIR {participant,group}``: configure, run, report.

Exit codes: 0 success; 1 a node failed (the crash files are named); 2 usage error or invalid
input (one line saying why, before any work starts); 130 Ctrl-C; 143 SIGTERM. Whatever the
end, a participant run leaves ``dataset_description.json`` and a report per subject.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import click

from bids_dl.cli.configure import build_config, collect_subjects
from bids_dl.cli.interrupt import RunStopped, SignalGuard, exit_now, stop_worker_processes
from bids_dl.cli.parser import bids_app_command, fail
from bids_dl.cli.progress import Progress, setup_logging, summary
from bids_dl.config import Config
from bids_dl.inputs import InputError, SubjectInputs

# No network at run time: nipype's version check (etelemetry) would try to phone home.
os.environ.setdefault("NIPYPE_NO_ET", "1")

LOGGER = logging.getLogger("bids_dl")


@bids_app_command
def main(**options) -> None:
    """Preprocess and analyse a BIDS dataset; write BIDS derivatives and HTML reports.

    BIDS_DIR is the input dataset (never written to), OUTPUT_DIR the derivatives folder
    (outside BIDS_DIR), and the analysis level is 'participant' (process subjects) or 'group'
    (gather every subject's tables into one, after the participant level).
    """
    group = options["analysis_level"] == "group"
    try:
        config = build_config(options)
        setup_logging(config.execution.verbosity)
        subjects = {} if group else collect_subjects(config)
    except InputError as error:
        fail(str(error))
    except KeyboardInterrupt:  # before any work: nothing to write, nothing to resume
        click.echo("bids_dl: interrupted before the run started", err=True)
        sys.exit(130)
    if group:
        run_group(config)
        return
    code = run_participant(config, subjects)
    if code > 128:  # stopped by a signal
        exit_now(code)
    sys.exit(code)


def run_participant(config: Config, subjects: dict[str, SubjectInputs]) -> int:
    """Build the participant workflow, write its methods, run it; the exit code."""
    from bids_dl.boilerplate import methods_markdown
    from bids_dl.derivatives import write_text_atomic

    execution = config.execution
    if execution.dry_run:
        from bids_dl.cli.plan import print_plan

        print_plan(config, subjects)
        return 0
    workflow = _build_workflow(config, subjects)
    logs = execution.output_dir / "logs"
    write_text_atomic(methods_markdown(workflow), logs / "CITATION.md")
    if execution.boilerplate_only:
        LOGGER.info("Methods text written to %s", logs / "CITATION.md")
        return 0
    write_text_atomic(config.to_json(), logs / f"config-{execution.run_uuid}.json")
    code = _execute(config, subjects, workflow)
    if config.workflow.classifier_bundle and _reports_due(config):
        if code == 0:
            _write_predictions(config, subjects, workflow)
        else:
            LOGGER.warning("--classifier: no prediction written, the run did not finish")
    return code


def _write_predictions(config: Config, subjects: dict[str, SubjectInputs], workflow) -> None:
    """``--classifier``: each participant's prediction, added to its own measures table (the
    features come from this run's outputs, so a missing one is known only now: exit 2); the
    reports are written again to show it."""
    from bids_dl.cli.outputs import write_reports
    from bids_dl.group_classify import measures_file, write_participant_predictions

    execution = config.execution
    try:
        files = [measures_file(execution.output_dir, subject) for subject in subjects.values()]
        written = write_participant_predictions(
            execution.output_dir,
            execution.bids_dir,
            Path(config.workflow.classifier_bundle),
            files,
            threads=config.nipype.omp_nthreads,
        )
    except InputError as error:
        fail(str(error))
    write_reports(config, subjects, workflow, [], None)
    LOGGER.info(
        "Predictions of %s added to %d measures table(s)",
        config.workflow.classifier_bundle,
        len(written),
    )


def _build_workflow(config: Config, subjects: dict[str, SubjectInputs]):
    """The participant graph, its nodes' resource requests set, checked against the limits."""
    from bids_dl.execution import check_resources, configure_nipype, request_node_resources
    from bids_dl.workflows.base import init_bids_dl_wf

    configure_nipype(config)
    workflow = init_bids_dl_wf(config, subjects)
    try:
        check_resources(config, workflow)
    except InputError as error:
        fail(str(error))
    request_node_resources(config, workflow)
    return workflow


def _execute(config: Config, subjects: dict[str, SubjectInputs], workflow) -> int:
    """Run the graph; in ``finally`` write the outputs, whether it finished, failed or was
    stopped by a signal."""
    from bids_dl.cli.outputs import crash_files
    from bids_dl.execution import run_workflow
    from bids_dl.templates import write_template_files

    progress = Progress(config)
    guard = SignalGuard()
    failed = False
    with guard.installed():
        try:
            if not config.execution.reports_only:
                write_template_files(config.template_dir)
                run_workflow(config, workflow, status_callback=progress)
        except RunStopped:
            stop_worker_processes()
        except Exception as error:  # nipype raises RuntimeError, plugins other types
            failed = True
            LOGGER.debug("workflow failed", exc_info=error)
        finally:
            guard.hold()
            crashes = crash_files(config, subjects)
            # a subject whose steps did not all end, with no failed step to say why
            others = [label for label in subjects if label not in crashes]
            unfinished = progress.unfinished(workflow, others) if guard.stopped or failed else []
            _write_outputs(config, subjects, workflow, unfinished, guard.stopped)
    return _conclude(config, subjects, crashes, unfinished, guard.stopped, failed)


def _write_outputs(
    config: Config,
    subjects: dict[str, SubjectInputs],
    workflow,
    unfinished: list[str],
    stopped: RunStopped | None,
) -> None:
    from bids_dl.cli.outputs import write_dataset_files, write_reports, write_resource_tables

    write_dataset_files(config, subjects)
    if config.nipype.resource_monitor:
        write_resource_tables(config, subjects, workflow)
    if _reports_due(config):
        stopped_by = stopped.signal_name if stopped else None
        write_reports(config, subjects, workflow, unfinished, stopped_by)


def _reports_due(config: Config) -> bool:
    """SLURMGraph returns once the jobs are submitted: the reports are written later, with
    ``--reports-only``."""
    return config.nipype.plugin != "SLURMGraph" or config.execution.reports_only


def _conclude(
    config: Config,
    subjects: dict[str, SubjectInputs],
    crashes: dict[str, list[Path]],
    unfinished: list[str],
    stopped: RunStopped | None,
    failed: bool,
) -> int:
    """Say how the run ended (the summary, the crash files) and return the exit code."""
    if not _reports_due(config):
        LOGGER.info(
            "The jobs of the whole graph were submitted to Slurm; when they have finished, "
            "write the reports with the same command and --reports-only."
        )
    else:
        failed_labels = [label for label in subjects if label in crashes]
        LOGGER.info(summary(config, list(subjects), failed_labels, unfinished))
    if stopped:
        click.echo(
            f"bids_dl: stopped by {stopped.signal_name}; finished steps stay in the work dir: "
            "run the same command again to resume",
            err=True,
        )
        return stopped.exit_code
    if failed or crashes:
        paths = [str(path) for files in crashes.values() for path in files]
        listing = "; ".join(paths) or f"see the log in {config.execution.output_dir / 'logs'}"
        click.echo(f"bids_dl: error: {len(paths)} node(s) failed; crash files: {listing}", err=True)
        return 1
    return 0


def run_group(config: Config) -> None:
    """The group level: every subject's measures in one table, the networks, the models of
    ``--classify`` (checked before any work), and the group report."""
    from bids_dl.derivatives import write_bidsignore
    from bids_dl.group import describe_table, write_group_outputs
    from bids_dl.group_networks import NetworkOptions
    from bids_dl.models.device import resolve_device

    settings = config.workflow
    networks = NetworkOptions(
        methods=list(settings.network_methods),
        bundle=settings.networks_bundle,
        n_components=settings.network_components,
        seed=settings.random_seed or 0,
        device=resolve_device(settings.device),
    )
    try:
        classification = None
        if settings.classify_target is not None:
            from bids_dl.group_classify import check_group_classification

            command = shlex.join(["bids_dl", *sys.argv[1:]])
            classification = check_group_classification(config, command)
        table = write_group_outputs(
            config.execution.output_dir,
            config.execution.participant_labels,
            networks,
            classification,
        )
    except InputError as error:
        fail(str(error))
    write_bidsignore(config.execution.output_dir)
    LOGGER.info("Group table: %s", describe_table(table))
    if classification is not None:
        LOGGER.info("Classification: %s", classification.output_dir)
    LOGGER.info("Group report: %s", config.execution.output_dir / "group.html")
