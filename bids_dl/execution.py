"""How the graph runs: nipype's settings, what each node asks the scheduler, what it used.

The CLI calls these around ``Workflow.run``; they hold what fMRIPrep users learnt the hard
way on clusters: settings reach worker processes and batch jobs through a ``nipype.cfg`` in
the work dir (not ``$HOME``), each Slurm job asks for the memory and CPUs its node declares,
deep-learning nodes take GPU slots, and a limit below what a node needs stops the run before
anything starts.
"""

from __future__ import annotations

import configparser
import csv
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from bids_dl.config import Config
from bids_dl.inputs import InputError

#: The plugins that submit each node as a batch job.
SLURM_PLUGINS = ("SLURM", "SLURMGraph")
#: Resource-monitor sampling period, in seconds (nipype's default is 1 s).
MONITOR_PERIOD_S = 0.5
#: How often MultiProc looks for finished nodes, in seconds (see :func:`poll_period_s`).
LOCAL_POLL_S = 0.2
#: nipype's log level at each verbosity (``--quiet`` is -1): its node-by-node log only with -v.
NIPYPE_LEVELS = {-1: "ERROR", 0: "WARNING", 1: "INFO", 2: "DEBUG"}
#: Columns of ``resources.tsv``.
RESOURCE_COLUMNS = (
    "node",
    "duration_s",
    "peak_memory_gb",
    "declared_memory_gb",
    "threads",
    "cpu_percent",
)


def configure_nipype(config: Config) -> None:
    """Configure nipype in this process and, through a nipype.cfg, in workers and jobs.

    MultiProc's forkserver workers and Slurm jobs start from a fresh interpreter and read
    their settings from ``$NIPYPE_CONFIG_DIR/nipype.cfg``; pointing it into the work dir also
    keeps nipype from writing to ``$HOME`` (read-only in many containers).
    """
    log_dir = config.execution.output_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    nipype_level = NIPYPE_LEVELS[min(config.execution.verbosity, 2)]
    settings = {
        "logging": {
            "log_directory": str(log_dir),
            # no pypeline.log: its handler locks with a lock *file* (SoftFileLock), which a
            # worker killed by a signal or a Slurm time limit leaves behind, and every later
            # run writing to this output folder would then wait on it forever
            "log_to_file": "false",
            "workflow_level": nipype_level,
            "interface_level": nipype_level,
            "utils_level": nipype_level,
        },
        "execution": {
            "crashfile_format": "txt",
            "stop_on_first_crash": str(config.nipype.stop_on_first_crash).lower(),
            "parameterize_dirs": "false",
            "check_version": "false",
            # nipype's d3 graph of the run in the work dir: unused, and slow for many subjects
            "create_report": "false",
            "resource_monitor_frequency": str(MONITOR_PERIOD_S),
            # how often the plugin looks for finished nodes: an execution setting in nipype,
            # not a plugin argument, so it is moved here from the plugin config
            "poll_sleep_duration": str(
                config.nipype.plugin_args.get("poll_sleep_duration", poll_period_s(config))
            ),
        },
        "monitoring": {"enabled": str(config.nipype.resource_monitor).lower()},
    }
    config_dir = config.execution.work_dir / "nipype"
    config_dir.mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser()
    parser.read_dict(settings)
    with (config_dir / "nipype.cfg").open("w", encoding="utf-8") as handle:
        parser.write(handle)
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)
    if config.workflow.random_seed is not None:  # read by ANTs in every worker and job
        os.environ["ANTS_RANDOM_SEED"] = str(config.workflow.random_seed)
    # matplotlib (report figures) writes a font cache under $HOME, which may be read-only
    os.environ.setdefault("MPLCONFIGDIR", str(config.execution.work_dir / "matplotlib"))
    # Slurm jobs are named after the user; nipype's plugin fails without LOGNAME.
    os.environ.setdefault("LOGNAME", os.environ.get("USER") or str(os.getuid()))

    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    nipype_config.update_config(settings)
    if config.nipype.resource_monitor:
        nipype_config.enable_resource_monitor()
    nipype_logging.update_logging(nipype_config)


def poll_period_s(config: Config) -> float:
    """How long MultiProc and the Slurm plugins wait between looks at their nodes.

    nipype's 2 s suits ``squeue``; locally a look is cheap, and 2 s delayed every step's
    successors by up to that much, and a rerun by 2 s per reused step.
    """
    return 2.0 if config.nipype.plugin in SLURM_PLUGINS else LOCAL_POLL_S


def run_workflow(config: Config, workflow, status_callback: Callable | None = None) -> None:
    """Run the graph from a scratch folder of the work dir, removed afterwards.

    ``status_callback`` is nipype's: called with a node and ``start``, ``end`` or
    ``exception`` (SLURMGraph, which only submits jobs, takes none).

    nipype's resource monitor writes its samples (``.proc-*`` files) into the current
    directory of the worker processes and Slurm jobs, which would otherwise be the user's
    folder (perhaps read-only in a container). With SLURMGraph the jobs start after this
    returns, from that folder, so it stays.
    """
    scratch = config.execution.work_dir / "run_cwd"
    scratch.mkdir(parents=True, exist_ok=True)
    previous = os.getcwd()
    os.chdir(scratch)
    try:
        settings = config.nipype.plugin_settings()
        if status_callback is not None and config.nipype.plugin != "SLURMGraph":
            settings["plugin_args"]["status_callback"] = status_callback
        workflow.run(**settings)
    finally:
        os.chdir(previous)
        if config.nipype.plugin != "SLURMGraph":
            shutil.rmtree(scratch, ignore_errors=True)


def check_resources(config: Config, workflow) -> None:
    """Refuse, before any work, limits that a node of the graph needs more than."""
    nodes = workflow._get_all_nodes()
    hungriest = max(nodes, key=lambda node: node.mem_gb)
    if config.nipype.mem_gb and hungriest.mem_gb > config.nipype.mem_gb:
        raise InputError(
            f"--mem-gb {config.nipype.mem_gb:g} is less than the {hungriest.mem_gb:g} GB that "
            f"node {hungriest.name} needs; give at least {hungriest.mem_gb:g}"
        )
    if config.nipype.omp_nthreads > config.nipype.nprocs:
        raise InputError(
            f"--omp-nthreads {config.nipype.omp_nthreads} is more than --nprocs "
            f"{config.nipype.nprocs}: a node could never start"
        )


def request_node_resources(config: Config, workflow) -> None:
    """Tell the scheduler what each node needs: GPU slots locally, memory and CPUs under Slurm.

    With a GPU, the deep-learning nodes are GPU nodes for MultiProc, which runs one at a time
    (``n_gpu_procs``, see :meth:`~bids_dl.config.NipypeSettings.plugin_settings`). nipype's
    Slurm plugins ignore ``mem_gb`` and ``n_procs``; without ``--mem`` a job gets the
    partition's default, which is how cluster runs die of out-of-memory kills. The plugin
    config's ``gpu_sbatch_args`` (e.g. ``-p gpu --gres=gpu:1``) go to the deep-learning nodes.
    """
    for node in workflow._get_all_nodes():
        model = is_model_node(node)
        if model:
            node.inputs.use_gpu = config.nipype.use_gpu
        if config.nipype.plugin not in SLURM_PLUGINS:
            continue
        # leading space: SLURMGraph glues these to the plugin config's sbatch_args as they are
        request = f" --mem={math.ceil(node.mem_gb * 1024)}M --cpus-per-task={node.n_procs}"
        if model and config.nipype.gpu_sbatch_args:
            request += f" {config.nipype.gpu_sbatch_args}"
        node.plugin_args = {**(node.plugin_args or {}), "sbatch_args": request}


def is_model_node(node) -> bool:
    """A deep-learning node: its interface has a ``use_gpu`` input (nipype's GPU flag)."""
    return "use_gpu" in node.inputs.copyable_trait_names()


def node_resources(workflow, folder: Path) -> list[dict]:
    """What each finished node of ``workflow`` took: time, peak memory (with the resource
    monitor on) and what it declared, read from the result files under ``folder``, the
    workflow's folder in the work dir (the same for every plugin)."""
    from nipype.utils.filemanip import loadpkl

    rows = []
    for path, node in nodes_by_path(workflow):
        result_file = Path(folder) / path / f"result_{node.name}.pklz"
        if not result_file.exists():
            continue
        runtime = getattr(loadpkl(result_file), "runtime", None)
        if runtime is None:
            continue
        peak = getattr(runtime, "mem_peak_gb", None)
        cpu = getattr(runtime, "cpu_percent", None)
        rows.append(
            {
                "node": path.as_posix(),
                "duration_s": f"{getattr(runtime, 'duration', float('nan')):.1f}",
                "peak_memory_gb": "n/a" if peak is None else f"{peak:.2f}",
                "declared_memory_gb": f"{node.mem_gb:g}",
                "threads": str(node.n_procs),
                "cpu_percent": "n/a" if cpu is None else f"{cpu:.0f}",
            }
        )
    return sorted(rows, key=lambda row: row["node"])


def nodes_by_path(workflow, prefix: Path = Path()):
    """``(path in the work dir, node)`` for every node of ``workflow`` and its sub-workflows."""
    from nipype.pipeline.engine import Workflow

    for item in workflow._graph.nodes():
        if isinstance(item, Workflow):
            yield from nodes_by_path(item, prefix / item.name)
        else:
            yield prefix / item.name, item


def write_resource_table(rows: list[dict], path: Path) -> Path:
    """``resources.tsv``: one row per node (see :data:`RESOURCE_COLUMNS`), written whole."""
    from bids_dl.derivatives import write_text_atomic

    lines = ["\t".join(RESOURCE_COLUMNS)]
    lines += ["\t".join(row[column] for column in RESOURCE_COLUMNS) for row in rows]
    return write_text_atomic("\n".join(lines) + "\n", path)


def read_resource_table(path: Path) -> list[dict]:
    """The rows of a ``resources.tsv``."""
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))
