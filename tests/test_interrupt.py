"""A run stopped by a signal (Slurm's SIGTERM at the time limit, Ctrl-C) writes its reports
and ``dataset_description.json``, exits 143 or 130, and resumes from the work dir."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bids_dl.cli.interrupt import RunStopped, SignalGuard
from tests.conftest import BIN, SMOKE_OPTIONS, assert_same_derivatives

#: The progress line of a finished step, e.g. ``[sub-01] anat_preproc_wf.conform  finished``.
FINISHED = re.compile(r"\[sub-01\] (?P<step>\S+)  finished in")
RUN_TIMEOUT_S = 900


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                      (signal.SIGINT, 130, "Ctrl-C")])  # fmt: skip
def test_a_signal_stops_the_run_once_then_waits_for_the_outputs(signum, code, name):
    guard = SignalGuard()
    with guard.installed(), pytest.raises(RunStopped) as stopped:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler runs before this ends
    assert (stopped.value.exit_code, stopped.value.signal_name) == (code, name)
    with guard.installed():
        guard.hold()  # while the outputs are written, a signal is noted, not raised
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
    assert guard.stopped is stopped.value
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _participant(bids: Path, output: Path, work: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "bids_dl"), str(bids), str(output), "participant", "-w", str(work),
        *SMOKE_OPTIONS, "--skip-bids-validation", "--participant-label", "01", *extra,
    ]  # fmt: skip


def _group_is_gone(pgid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _stop_after_a_step(command: list[str], signum: int) -> tuple[int, str, list[str]]:
    """Start ``command`` in its own process group and send ``signum`` to the whole group, as
    a terminal's Ctrl-C or Slurm does, once a step has finished; its exit code, its stderr and
    that step's path in the subject's workflow."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    watchdog = threading.Timer(RUN_TIMEOUT_S, os.killpg, (run.pid, signal.SIGKILL))
    watchdog.start()
    seen, finished = [], None
    for line in run.stderr:
        seen.append(line)
        if finished := FINISHED.search(line):
            os.killpg(run.pid, signum)
            break
    rest = run.communicate(timeout=120)[1]
    watchdog.cancel()
    stderr = "".join(seen) + rest
    assert finished, stderr[-3000:]
    assert _group_is_gone(run.pid), "worker processes outlived the run"
    return run.returncode, stderr, finished["step"].split(".")


@pytest.mark.slow
def test_a_run_stopped_by_a_signal_leaves_its_reports_and_resumes(smoke_run, tmp_path):
    """Ctrl-C once a step has finished, then SIGTERM in the resumed run; each leaves
    ``dataset_description.json`` and a report that says the run stopped, and the last run with
    the same work dir reuses the finished steps and writes what an uninterrupted run writes."""
    output, work = tmp_path / "out", tmp_path / "work"
    command = _participant(smoke_run["bids"], output, work)
    computed = {}
    for signum, code, name in ((signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")):
        returncode, stderr, step = _stop_after_a_step(command, signum)
        assert returncode == code, stderr[-3000:]
        assert f"stopped by {name}" in stderr and "1 unfinished (sub-01)" in stderr
        assert (output / "dataset_description.json").is_file()
        assert 'id="stopped"' in (output / "sub-01.html").read_text()
        result = work.joinpath("bids_dl_wf", "single_subject_01_wf", *step)
        computed[result] = (result / f"result_{step[-1]}.pklz").stat().st_mtime_ns

    rerun = subprocess.run(
        [*command, "--quiet"], capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    quiet = rerun.stdout + rerun.stderr
    assert "finished in" not in quiet and "subject(s) done" not in quiet, quiet[-3000:]
    for folder, mtime in computed.items():  # reused, not computed again
        assert (folder / f"result_{folder.name}.pklz").stat().st_mtime_ns == mtime
    assert 'id="stopped"' not in (output / "sub-01.html").read_text()
    assert_same_derivatives(output, smoke_run["output"], "01")
