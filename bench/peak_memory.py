"""Wall time and true peak resident memory of a command.

``ru_maxrss`` of a child counts the memory it had before ``exec``, a copy of its parent's, so
a large benchmark process makes every command it starts look large (seen here: 5.1 GB for a
1.0 GB process). The kernel's high-water mark of the command's own memory (``VmHWM`` in
``/proc/PID/status``) is read instead, every 20 ms until the command exits.

    python bench/peak_memory.py -- bids_dl-models evaluate ...
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.02


def _high_water_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # already gone
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_measured(command: list[str], **popen) -> tuple[float, float]:
    """Run ``command``; return its seconds and peak resident memory in GB (raises on failure)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, **popen)
    peak_kb = 0
    while process.poll() is None:
        peak_kb = max(peak_kb, _high_water_kb(process.pid))
        time.sleep(POLL_S)
    seconds = time.perf_counter() - start
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    return seconds, peak_kb / 1024**2


def run_logged(command: list[str], log: Path) -> tuple[float, float]:
    """:func:`run_measured` with the command's output in ``log``; a failure raises
    ``RuntimeError`` with the log's tail."""
    print("  " + " ".join(command), flush=True)
    with open(log, "w", encoding="utf-8") as handle:
        try:
            return run_measured(command, stdout=handle, stderr=subprocess.STDOUT)
        except subprocess.CalledProcessError as error:
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"{command[0]} failed ({error.returncode}):\n{tail}") from None


if __name__ == "__main__":
    arguments = sys.argv[1:]
    arguments = arguments[1:] if arguments[:1] == ["--"] else arguments
    seconds, peak = run_measured(arguments)
    print(f"{seconds:.1f} s, peak {peak:.2f} GB")
