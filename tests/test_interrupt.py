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


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_leaves_its_reports_and_resumes(smoke_run, tmp_path):
    """SIGTERM to the process group, as Slurm sends it, once a step has finished; the rerun
    with the same work dir reuses that step and writes what an uninterrupted run writes."""
    output, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    run = subprocess.Popen(
        _participant(smoke_run["bids"], output, work),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    watchdog = threading.Timer(RUN_TIMEOUT_S, os.killpg, (run.pid, signal.SIGKILL))
    watchdog.start()
    seen = []
    for line in run.stderr:
        seen.append(line)
        if finished := FINISHED.search(line):
            os.killpg(run.pid, signal.SIGTERM)
            break
    rest = run.communicate(timeout=120)[1]
    watchdog.cancel()
    stderr = "".join(seen) + rest
    assert finished, stderr[-3000:]
    assert run.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "1 unfinished (sub-01)" in stderr
    assert _group_is_gone(run.pid), "worker processes outlived the run"
    assert (output / "dataset_description.json").is_file()
    assert 'id="stopped"' in (output / "sub-01.html").read_text()
    step = finished["step"].split(".")
    result = work.joinpath("bids_dl_wf", "single_subject_01_wf", *step, f"result_{step[-1]}.pklz")
    computed = result.stat().st_mtime_ns

    rerun = subprocess.run(
        _participant(smoke_run["bids"], output, work, "--quiet"),
        capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    quiet = rerun.stdout + rerun.stderr
    assert "finished in" not in quiet and "subject(s) done" not in quiet, quiet[-3000:]
    assert result.stat().st_mtime_ns == computed  # reused, not computed again
    assert 'id="stopped"' not in (output / "sub-01.html").read_text()
    assert_same_derivatives(output, smoke_run["output"], "01")
