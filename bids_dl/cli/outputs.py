"""What a participant run leaves in OUTPUT_DIR however it ended (finished, failed, stopped):
the dataset-level files, the resource tables and one report per subject."""

from __future__ import annotations

from pathlib import Path

from bids_dl.config import Config
from bids_dl.inputs import SubjectInputs


def write_dataset_files(config: Config, subjects: dict[str, SubjectInputs]) -> None:
    """``dataset_description.json``, ``.bidsignore`` and the label lookup tables."""
    from bids_dl.derivatives import (
        write_bidsignore,
        write_dataset_description,
        write_structure_lookup,
        write_tissue_lookup,
        write_tumor_lookup,
    )

    output_dir = config.execution.output_dir
    write_dataset_description(output_dir, config.execution.bids_dir)
    write_bidsignore(output_dir)
    write_tissue_lookup(output_dir)
    if config.workflow.segmentation_bundle:
        write_structure_lookup(output_dir)
    if any("tumor" in inputs.analyses for inputs in subjects.values()):
        write_tumor_lookup(output_dir)


def write_resource_tables(config: Config, subjects: dict[str, SubjectInputs], workflow) -> None:
    """Each subject's nodes' time and peak memory: ``sub-X/log/<run>/resources.tsv``."""
    from bids_dl.execution import node_resources, write_resource_table
    from bids_dl.workflows.base import subject_log_dir

    for label in subjects:
        name = f"single_subject_{label}_wf"
        rows = node_resources(workflow.get_node(name), Path(workflow.base_dir, workflow.name, name))
        folder = subject_log_dir(config.execution.output_dir, label, config.execution.run_uuid)
        write_resource_table(rows, folder / "resources.tsv")


def write_reports(
    config: Config,
    subjects: dict[str, SubjectInputs],
    workflow,
    unfinished: list[str],
    stopped_by: str | None,
) -> list[Path]:
    """One report per subject; its methods come from that subject's part of ``workflow``, and
    the report of a subject in ``unfinished`` says that the run was stopped."""
    from bids_dl.boilerplate import methods_text
    from bids_dl.reports.participant import write_participant_report

    reports = []
    for label, inputs in subjects.items():
        methods, references = methods_text(workflow.get_node(f"single_subject_{label}_wf"))
        reference = inputs.t1w if inputs.has_anatomy else inputs.asl[0].path
        source = Path(reference).relative_to(config.execution.bids_dir).as_posix()
        reports.append(
            write_participant_report(
                config.execution.output_dir,
                label,
                source,
                methods,
                references,
                stopped_by=stopped_by if label in unfinished else None,
            )
        )
    return reports


def crash_files(config: Config, labels) -> dict[str, list[Path]]:
    """The crash files of this run, per subject that has any."""
    from bids_dl.workflows.base import subject_log_dir

    found = {}
    for label in labels:
        folder = subject_log_dir(config.execution.output_dir, label, config.execution.run_uuid)
        crashes = sorted(folder.glob("crash-*"))
        if crashes:
            found[label] = crashes
    return found
