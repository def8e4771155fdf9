"""Scheduling and start-up: Slurm requests, GPU flags, plugin configs, the pybids cache."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bids_dl.config import Config, ExecutionSettings, NipypeSettings, WorkflowSettings
from bids_dl.execution import (
    is_model_node,
    node_resources,
    read_resource_table,
    request_node_resources,
    write_resource_table,
)
from bids_dl.inputs import collect_inputs, dataset_fingerprint, index_dataset
from bids_dl.models.registry import shipped_bundles
from bids_dl.workflows.base import init_bids_dl_wf
from tests.test_cli import assert_input_error, run_participant
from tests.test_workflows import _subjects

#: One row of a ``resources.tsv``.
RESOURCE_ROW = {
    "node": "anat_preproc_wf/n4",
    "duration_s": "12.5",
    "peak_memory_gb": "0.61",
    "declared_memory_gb": "1.1",
    "threads": "2",
    "cpu_percent": "180",
}


def _config(bids: Path, tmp_path: Path, **nipype) -> Config:
    return Config(
        ExecutionSettings(bids_dir=bids, output_dir=tmp_path / "out", work_dir=tmp_path / "w"),
        nipype=NipypeSettings(nprocs=4, omp_nthreads=2, **nipype),
        workflow=WorkflowSettings(brain_extraction_bundle=str(shipped_bundles()["brain_mask"])),
    )


def test_slurm_jobs_ask_for_what_their_node_declares(tiny_bids, tmp_path):
    config = _config(tiny_bids, tmp_path, plugin="SLURM", gpu_sbatch_args="-p gpu --gres=gpu:1")
    workflow = init_bids_dl_wf(config, _subjects(tiny_bids))
    request_node_resources(config, workflow)
    nodes = workflow._get_all_nodes()
    assert any(is_model_node(node) for node in nodes)
    for node in nodes:
        request = node.plugin_args["sbatch_args"]
        assert request.startswith(" ")  # SLURMGraph appends it to the global args as it is
        memory = int(re.search(r"--mem=(\d+)M", request).group(1))
        assert memory >= node.mem_gb * 1024, node.fullname
        assert f"--cpus-per-task={node.n_procs}" in request
        assert ("--gres=gpu:1" in request) == is_model_node(node), node.fullname
    mask_node = workflow.get_node("single_subject_01_wf.anat_preproc_wf.brain_extraction_wf")
    assert mask_node.get_node("model_mask").n_procs == 2


def test_local_runs_flag_model_nodes_for_the_gpu(tiny_bids, tmp_path):
    config = _config(tiny_bids, tmp_path, use_gpu=True)
    workflow = init_bids_dl_wf(config, _subjects(tiny_bids))
    request_node_resources(config, workflow)
    gpu_nodes = [node.name for node in workflow._get_all_nodes() if node.is_gpu_node()]
    assert gpu_nodes == ["model_mask", "model_mask"]
    assert all(not node.plugin_args for node in workflow._get_all_nodes())
    # one deep-learning node at a time: each takes omp_nthreads GPU slots
    assert config.nipype.plugin_settings()["plugin_args"]["n_gpu_procs"] == 2


def test_resource_table_round_trip_and_missing_results(tiny_bids, tmp_path):
    config = _config(tiny_bids, tmp_path)
    workflow = init_bids_dl_wf(config, _subjects(tiny_bids))
    assert node_resources(workflow, tmp_path / "nothing_ran") == []
    rows = [RESOURCE_ROW]
    path = write_resource_table(rows, tmp_path / "resources.tsv")
    assert read_resource_table(path) == rows


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("plugin: Bogus\n", "plugin must be one of"),
        ("plugin: SLURM\nsbatch_args: -p short\n", "keys among"),
        ("plugin: SLURM\nplugin_args: [1, 2]\n", "plugin_args must be a mapping"),
        ("plugin: [unclosed\n", "--plugin-config"),
    ],
)
def test_bad_plugin_configs(tiny_bids, tmp_path, content, message):
    path = tmp_path / "plugin.yml"
    path.write_text(content)
    result = run_participant(tiny_bids, tmp_path, "--plugin-config", path, "--dry-run")
    assert_input_error(result, message)


def test_plugin_config_reaches_the_plan(tiny_bids, tmp_path):
    path = tmp_path / "plugin.yml"
    path.write_text(
        "plugin: SLURM\nplugin_args: {sbatch_args: -p short}\ngpu_sbatch_args: -p gpu\n"
    )
    result = run_participant(tiny_bids, tmp_path, "--plugin-config", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert '"plugin": "SLURM"' in result.output and "-p short" in result.output


def test_index_is_cached_and_follows_changes(tiny_bids, tmp_path):
    database_dir = tmp_path / "db"
    first = index_dataset(tiny_bids, database_dir)
    cached = sorted(database_dir.glob("bids_db-*"))
    assert len(cached) == 1 and (cached[0] / "layout_index.sqlite").exists()
    again = index_dataset(tiny_bids, database_dir)
    assert again.get_subjects() == first.get_subjects() == ["01", "02"]
    before = dataset_fingerprint(tiny_bids)
    new_anat = tiny_bids / "sub-03" / "anat"
    new_anat.mkdir(parents=True)
    shutil.copy(tiny_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz", new_anat / "sub-03_T1w.nii.gz")
    assert dataset_fingerprint(tiny_bids) != before
    subjects = collect_inputs(tiny_bids, [], [], {}, database_dir=database_dir)
    assert sorted(subjects) == ["01", "02", "03"]
    assert len(list(database_dir.glob("bids_db-*"))) == 2
    assert not list(database_dir.glob(".bids_db-*"))  # no staging folder left behind


def test_fingerprint_ignores_derivatives(tiny_bids):
    before = dataset_fingerprint(tiny_bids)
    (tiny_bids / "derivatives" / "x").mkdir(parents=True)
    (tiny_bids / "derivatives" / "x" / "file.txt").write_text("not indexed")
    assert dataset_fingerprint(tiny_bids) == before


def test_report_shows_the_newest_resource_table(tmp_path):
    from bids_dl.reports.participant import write_participant_report

    row = RESOURCE_ROW
    log = tmp_path / "sub-01" / "log"
    write_resource_table([row], log / "20261127-100000_aaaa" / "resources.tsv")
    write_resource_table(
        [{**row, "node": "newest"}], log / "20261128-100000_bbbb" / "resources.tsv"
    )
    report = write_participant_report(tmp_path, "01", "sub-01/anat/sub-01_T1w.nii.gz", [], [])
    html = report.read_text()
    assert 'id="resources"' in html and "20261128-100000_bbbb" in html
    assert "<code>newest</code>" in html and "anat_preproc_wf/n4" not in html


def test_report_without_resource_monitor_has_no_resources_section(tmp_path):
    from bids_dl.reports.participant import write_participant_report

    report = write_participant_report(tmp_path, "01", "sub-01/anat/sub-01_T1w.nii.gz", [], [])
    assert 'id="resources"' not in report.read_text()
