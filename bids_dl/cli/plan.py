"""``--dry-run``: what would run for whom, printed on stdout; nothing computed or written."""

from __future__ import annotations

import json
from pathlib import Path

import click

from bids_dl import __version__
from bids_dl.config import Config
from bids_dl.inputs import SubjectInputs


def print_plan(config: Config, subjects: dict[str, SubjectInputs]) -> None:
    """The folders, the plugin, and each subject's inputs and analyses."""
    execution = config.execution
    click.echo(f"bids_dl {__version__} dry run: nothing will be computed or written.")
    click.echo(f"  input:    {execution.bids_dir}")
    click.echo(f"  output:   {execution.output_dir}")
    click.echo(f"  work dir: {execution.work_dir}")
    click.echo(f"  analyses: {', '.join(execution.analyses)}")
    click.echo(f"  plugin:   {json.dumps(config.nipype.plugin_settings())}")
    for label, inputs in subjects.items():
        if inputs.has_anatomy:
            reference = "ce-T1w" if inputs.reference_is_contrast_enhanced else "T1w"
            stripped = " (already skull-stripped)" if inputs.skull_stripped else ""
            where = Path(inputs.t1w).relative_to(execution.bids_dir)
            click.echo(f"  sub-{label}: {reference} {where}{stripped}")
        else:
            click.echo(f"  sub-{label}: no T1w (ASL on its own grid only)")
        for kind, files in inputs.files.items():
            if files and not (inputs.has_anatomy and files[0] == inputs.t1w):
                click.echo(f"           {kind}: {Path(files[0]).relative_to(execution.bids_dir)}")
        click.echo(f"           runs: {', '.join(inputs.analyses)}")
