"""The participant workflow through a real Slurm (``.ci/start_slurm.sh`` starts one).

sub-01 of the small sample runs with ``--plugin SLURM`` (every node a batch job that asks for
the memory and CPUs its node declares), then ``SLURMGraph`` (the whole graph submitted at once
with dependencies) reuses that work dir into a new output folder; both Slurm runs must write
the same derivatives as the MultiProc smoke run, whose options they share (one thread per node
and a fixed ANTs seed, which make registration reproducible).
The tests skip where Slurm is absent, except in CI (``BIDS_DL_REQUIRE_SLURM=1``), where they
fail.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bids_dl.models.registry import shipped_bundles
from bids_dl.workflows.resources import MEM_GB
from tests.conftest import SMOKE_OPTIONS, assert_same_derivatives, run_cli

REQUIRED = os.environ.get("BIDS_DL_REQUIRE_SLURM") == "1"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("sbatch") is None and not REQUIRED,
        reason="no Slurm here (bash .ci/start_slurm.sh starts one)",
    ),
]
SUBJECT = "01"
QUEUE_TIMEOUT_S = 900


def _slurm_is_up() -> None:
    info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    assert info.returncode == 0 and "idle" in info.stdout + "mixed", (
        f"Slurm is not running ({info.stderr.strip()}); start it with bash .ci/start_slurm.sh"
    )


def _wait_for_graph_jobs() -> None:
    """Until no SLURMGraph job is pending or running (the plugin returns after submitting;
    it names jobs ``j<index>_<node>``)."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True)
        if not re.findall(r"^j\d+_", queue.stdout, flags=re.MULTILINE):
            return
        time.sleep(2)
    raise AssertionError(f"Slurm jobs still queued after {QUEUE_TIMEOUT_S} s")


def _run_participant(bids: Path, output: Path, work: Path, *extra: str):
    return run_cli(
        str(bids),
        str(output),
        "participant",
        "-w",
        str(work),
        *SMOKE_OPTIONS,
        "--skip-bids-validation",
        "--participant-label",
        SUBJECT,
        "--analyses",  # the plugin is under test, not the analyses: diffusion and ASL are left out
        "anat",
        *extra,
    )


@pytest.fixture(scope="module")
def slurm_runs(smoke_run, tmp_path_factory) -> dict:
    if REQUIRED:
        assert shutil.which("sbatch"), "BIDS_DL_REQUIRE_SLURM=1 but sbatch is not installed"
    _slurm_is_up()
    bids, base = smoke_run["bids"], tmp_path_factory.mktemp("slurm")
    work = base / "work"
    slurm_config = base / "slurm.yml"
    slurm_config.write_text(
        "plugin: SLURM\nplugin_args:\n  poll_sleep_duration: 1\n  sbatch_args: --time=30\n"
    )
    per_node = _run_participant(
        bids, base / "out_slurm", work, "--plugin-config", str(slurm_config), "--resource-monitor"
    )
    graph_config = base / "slurm_graph.yml"
    graph_config.write_text("plugin: SLURMGraph\nplugin_args:\n  sbatch_args: --time=30\n")
    graph_args = ("--plugin-config", str(graph_config))
    graph = _run_participant(bids, base / "out_graph", work, *graph_args)
    _wait_for_graph_jobs()
    reports = _run_participant(bids, base / "out_graph", work, *graph_args, "--reports-only")
    return {
        "base": base,
        "work": work,
        "slurm": per_node,
        "graph": graph,
        "graph_reports": reports,
        "reference": smoke_run["output"],
    }


def test_slurm_run_succeeds_through_batch_jobs(slurm_runs):
    result = slurm_runs["slurm"]
    assert result.returncode == 0, result.stderr[-3000:]
    job_logs = list(slurm_runs["work"].rglob("slurm-*.out"))
    assert len(job_logs) >= 10, "the nodes did not run as Slurm jobs"


def test_slurm_derivatives_equal_multiproc(slurm_runs):
    assert_same_derivatives(
        slurm_runs["base"] / "out_slurm", slurm_runs["reference"], SUBJECT, modalities=False
    )


def _finished_jobs(work_dir: Path) -> dict[str, dict[str, str]]:
    """Slurm's job-completion log (``jobcomp/filetxt``): node name -> the job's fields, for
    the jobs that ran from ``work_dir``."""
    settings = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True)
    location = re.search(r"JobCompLoc\s*=\s*(\S+)", settings.stdout)
    assert location, "slurm.conf has no JobCompLoc (jobcomp/filetxt)"
    jobs = {}
    for line in Path(location.group(1)).read_text().splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("WorkDir", "").startswith(str(work_dir)) and fields.get("Name"):
            jobs[fields["Name"].split(".")[0]] = fields  # SLURM's names: node.workflow...
    return jobs


def _tres_memory_mb(tres: str) -> float:
    value = re.search(r"mem=([\d.]+)([MGT])", tres)
    return float(value.group(1)) * {"M": 1, "G": 1024, "T": 1024**2}[value.group(2)]


def test_slurm_jobs_asked_for_what_their_node_declares(slurm_runs):
    jobs = _finished_jobs(slurm_runs["work"])
    # the tissues come from the shipped structures model, or from Atropos without one
    structures = "structures" in shipped_bundles()
    segmentation = "model_segmentation" if structures else "tissues"
    # derivative writers run in the bids_dl process (run_without_submitting), not as jobs
    assert {"n4", "registration", "model_mask", segmentation} <= set(jobs)
    assert not [name for name in jobs if name.startswith("ds_")]
    expected = {  # node: (GB it declares, threads)
        "registration": (MEM_GB["registration"], 1),
        "model_mask": (MEM_GB["model"], 1),
        "conform": (MEM_GB["conform"], 1),
        segmentation: (MEM_GB["structures" if structures else "tissues"], 1),
    }
    for name, (memory_gb, threads) in expected.items():
        tres = jobs[name]["Tres"]
        assert _tres_memory_mb(tres) == math.ceil(memory_gb * 1024), (name, tres)
        assert f"cpu={threads}," in tres, (name, tres)
    assert all(job["JobState"] == "COMPLETED" for job in jobs.values())


def test_resource_monitor_table_and_report(slurm_runs):
    output = slurm_runs["base"] / "out_slurm"
    tables = list((output / f"sub-{SUBJECT}" / "log").glob("*/resources.tsv"))
    assert len(tables) == 1
    rows = tables[0].read_text().splitlines()
    header, body = rows[0].split("\t"), [row.split("\t") for row in rows[1:]]
    assert header[:3] == ["node", "duration_s", "peak_memory_gb"]
    n4 = next(row for row in body if row[0] == "anat_preproc_wf/n4")
    assert float(n4[1]) > 0 and 0.05 < float(n4[2]) < float(n4[3]) * 2
    report = (output / f"sub-{SUBJECT}.html").read_text()
    assert 'id="resources"' in report and "anat_preproc_wf/n4" in report


def test_slurm_graph_submits_then_reports(slurm_runs):
    assert slurm_runs["graph"].returncode == 0, slurm_runs["graph"].stderr[-3000:]
    assert "--reports-only" in slurm_runs["graph"].stderr
    assert slurm_runs["graph_reports"].returncode == 0, slurm_runs["graph_reports"].stderr[-3000:]
    output = slurm_runs["base"] / "out_graph"
    assert_same_derivatives(output, slurm_runs["reference"], SUBJECT, modalities=False)
    description = json.loads((output / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
