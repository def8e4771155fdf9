"""``bids_dl-sample OUTPUT_DIR``: write the simulated sample BIDS dataset."""

from __future__ import annotations

from pathlib import Path

import click

from bids_dl.cli.parser import fail


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
def main(output_dir: Path, n_subjects: int, small: bool, seed: int, lesions: bool) -> None:
    """Write the sample BIDS dataset (simulated from the MNI152 template) to OUTPUT_DIR."""
    from bids_dl.sample import write_sample_dataset

    if output_dir.exists() and any(output_dir.iterdir()):
        fail(f"{output_dir} exists and is not empty; choose a new folder")
    write_sample_dataset(
        output_dir,
        n_subjects=n_subjects,
        voxel_mm=2.0 if small else 1.0,
        seed=seed,
        lesions=lesions,
    )
    click.echo(f"Sample BIDS dataset written to {output_dir}")
