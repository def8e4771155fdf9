"""Peak memory and time of every node of a finished run, each re-run alone in a fresh process.

nipype's resource monitor samples a worker's memory once per period and a MultiProc worker
keeps what earlier nodes left, so its numbers are neither exact nor per node. Here each
node (its pickled ``_node.pklz`` in the work dir of a finished run) runs again in a new
Python process, as a Slurm job would, and the process's true peak resident memory
(``VmHWM``, see ``peak_memory.py``) is read. These numbers set the ``mem_gb`` the nodes declare.

    python bench/bench_node_memory.py WORK_DIR [--threads 2] [--every-subject] [--only bold_]

writes ``bench/results/node_memory.tsv``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak_memory import run_measured  # noqa: E402

#: Run one node's interface in the current process, in a scratch folder.
RUN_NODE = """
import sys
from nipype.utils.filemanip import loadpkl
node = loadpkl(sys.argv[1])
node.interface.run(cwd=sys.argv[2])
"""


def node_kind(path: Path) -> str:
    """A node's name without the subject: ``anat_preproc_wf/n4``."""
    parts = path.parent.parts
    start = next(i for i, part in enumerate(parts) if part.startswith("single_subject_"))
    return "/".join(parts[start + 1 :])


def measure(node_file: Path, threads: int) -> tuple[float, float]:
    """Seconds and peak resident memory (GB) of one node re-run in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="node_memory_") as scratch:
        return run_measured(
            [sys.executable, "-c", RUN_NODE, str(node_file), scratch],
            stdout=subprocess.DEVNULL,
            env={"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin", "NIPYPE_NO_ET": "1"},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/node_memory.tsv"))
    parser.add_argument("--every-subject", action="store_true", help="not one node per kind")
    parser.add_argument("--only", default="", help="the nodes whose name holds this text")
    args = parser.parse_args()
    from nipype.utils.filemanip import loadpkl

    nodes = sorted(args.work_dir.glob("bids_dl_wf/single_subject_*_wf/**/_node.pklz"))
    # a MapNode runs as its ``mapflow/`` sub-nodes, which are measured instead
    nodes = [path for path in nodes if not (path.parent / "mapflow").is_dir()]
    nodes = [path for path in nodes if args.only in node_kind(path)]
    if not args.every_subject:  # one node of each kind, from the last subject that has it
        nodes = list({node_kind(path): path for path in nodes}.values())
    rows = []
    for node_file in nodes:
        declared = loadpkl(node_file).mem_gb
        seconds, peak = measure(node_file, args.threads)
        rows.append((node_kind(node_file), seconds, peak, declared))
        print(f"{rows[-1][0]:50s} {seconds:7.1f} s {peak:6.2f} GB (declares {declared:g})")
    lines = ["node\tseconds\tpeak_memory_gb\tdeclared_memory_gb"]
    lines += [f"{k}\t{s:.1f}\t{p:.3f}\t{d:g}" for k, s, p, d in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    summary = {}
    for kind, _, peak, declared in rows:
        summary[kind] = (max(peak, summary.get(kind, (0, 0))[0]), declared)
    print(json.dumps({k: round(v[0], 2) for k, v in sorted(summary.items())}, indent=1))


if __name__ == "__main__":
    main()
