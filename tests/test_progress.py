"""Progress lines (nipype's status callback), the summary, and the report of a stopped run."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from bids_dl.cli.progress import Progress, subject_steps, summary
from bids_dl.config import Config, ExecutionSettings
from bids_dl.workflows.base import init_bids_dl_wf
from tests.test_workflows import _subjects

NOW = datetime.now(UTC)


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


@pytest.fixture
def lines():
    """The messages of ``bids_dl.progress``, whatever an earlier command set its level to."""
    logger = logging.getLogger("bids_dl.progress")
    handler, level = ListHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _config(tmp_path, verbosity: int = 0) -> Config:
    return Config(
        ExecutionSettings(
            bids_dir=tmp_path / "bids",
            output_dir=tmp_path / "out",
            work_dir=tmp_path / "w",
            verbosity=verbosity,
        )
    )


def _node(step: str, started: datetime = NOW, writer: bool = False, subject: str = "01"):
    runtime = SimpleNamespace(startTime=started.isoformat(), duration=12.34)
    return SimpleNamespace(
        fullname=f"bids_dl_wf.single_subject_{subject}_wf.{step}",
        result=SimpleNamespace(runtime=runtime),
        run_without_submitting=writer,
    )


def test_a_finished_step_says_its_subject_and_time(tmp_path, lines):
    progress = Progress(_config(tmp_path))
    progress(_node("anat_preproc_wf.n4", started=progress.started_at), "start")
    progress(_node("anat_preproc_wf.n4", started=progress.started_at), "end")
    progress(_node("ds_mask", started=progress.started_at, writer=True), "end")
    progress(_node("anat_preproc_wf.conform", started=NOW - timedelta(days=1)), "end")
    assert lines == ["INFO [sub-01] anat_preproc_wf.n4  finished in 12.3 s"]
    assert progress.ended["01"] == {"anat_preproc_wf.n4", "ds_mask", "anat_preproc_wf.conform"}


def test_verbose_adds_started_reused_and_written_steps(tmp_path, lines):
    progress = Progress(_config(tmp_path, verbosity=1))
    progress(_node("anat_preproc_wf.n4", started=progress.started_at), "start")
    progress(_node("ds_mask", started=progress.started_at, writer=True), "end")
    progress(_node("anat_preproc_wf.conform", started=NOW - timedelta(days=1)), "end")
    assert lines == [
        "INFO [sub-01] anat_preproc_wf.n4  started",
        "INFO [sub-01] ds_mask  finished in 12.3 s",
        "INFO [sub-01] anat_preproc_wf.conform  reused from the work dir",
    ]


def test_a_failed_step_names_the_crash_folder_and_odd_nodes_pass(tmp_path, lines):
    progress = Progress(_config(tmp_path))
    progress(_node("anat_preproc_wf.n4"), "exception")
    assert lines[0].startswith("ERROR [sub-01] anat_preproc_wf.n4  failed; crash file in ")
    assert lines[0].endswith(f"out/sub-01/log/{progress._config.execution.run_uuid}")
    progress(SimpleNamespace(fullname="outside_wf.node"), "end")  # not a subject's step
    progress(SimpleNamespace(fullname="bids_dl_wf.single_subject_01_wf.x"), "end")  # no result
    assert [line for line in lines if not line.startswith("DEBUG")] == lines[:1]


def test_summary_counts_and_names_the_subjects(tmp_path):
    config = _config(tmp_path)
    line = summary(config, ["01", "02", "03"], failed=["02"], unfinished=["03"])
    assert line == (
        "1 subject(s) done, 1 failed (sub-02), 1 unfinished (sub-03); "
        f"reports: {tmp_path / 'out'}/sub-<label>.html"
    )


def test_unfinished_subjects_are_those_with_a_step_that_did_not_end(tiny_bids, tmp_path):
    config = Config(ExecutionSettings(tiny_bids, tmp_path / "out", tmp_path / "w"))
    workflow = init_bids_dl_wf(config, _subjects(tiny_bids))
    steps = subject_steps(workflow, "01")
    assert "anat_preproc_wf.n4" in steps
    assert not any(step.endswith(("inputnode", "outputnode")) for step in steps)
    progress = Progress(config)
    progress.ended["01"] = set(steps)
    progress.ended["02"] = set(steps) - {"anat_preproc_wf.n4"}
    assert progress.unfinished(workflow, ["01", "02"]) == ["02"]


def test_the_report_of_a_stopped_run_says_so(tmp_path):
    from bids_dl.reports.participant import write_participant_report

    source = "sub-01/anat/sub-01_T1w.nii.gz"
    html = write_participant_report(tmp_path, "01", source, [], [], stopped_by="SIGTERM")
    text = html.read_text()
    assert 'id="stopped"' in text and "stopped (SIGTERM)" in text
    assert "No errors to report" not in text
    plain = write_participant_report(tmp_path, "01", source, [], []).read_text()
    assert 'id="stopped"' not in plain and "No errors to report" in plain
