"""A node that fails leaves a crash file, the CLI names it and exits 1, the report lists it,
and ``dataset_description.json`` is written all the same."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from bids_dl.cli.run import main
from bids_dl.sample import write_sample_dataset
from bids_dl.workflows.interfaces import ants


def test_failed_node_is_reported(tmp_path, monkeypatch):
    bids = tmp_path / "bids"
    write_sample_dataset(bids, n_subjects=1, voxel_mm=3.0, seed=1, dwi=False, asl=False)

    def broken_n4(*args, **kwargs):
        raise RuntimeError("simulated N4 failure")

    monkeypatch.setattr(ants, "n4_bias_correct", broken_n4)
    output = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            str(bids),
            str(output),
            "participant",
            "-w",
            str(tmp_path / "w"),
            "--plugin",
            "Linear",
            "--skip-bids-validation",
        ],
    )
    assert result.exit_code == 1, result.output
    message = result.output.strip().splitlines()[-1]
    assert "node(s) failed" in message
    crash_files = re.findall(r"(/\S+crash-\S+\.txt)", message)
    assert crash_files and all(Path(f).is_file() for f in crash_files)
    assert "simulated N4 failure" in Path(crash_files[0]).read_text()
    assert Path(crash_files[0]).parent.parent == output / "sub-01" / "log"
    assert "[sub-01] anat_preproc_wf.n4  failed; crash file in" in result.output
    assert "0 subject(s) done, 1 failed (sub-01)" in result.output
    report = (output / "sub-01.html").read_text()
    assert "1 step(s) failed" in report
    assert "node(s) failed" in report and "simulated N4 failure" in report
    assert (output / "dataset_description.json").is_file()
