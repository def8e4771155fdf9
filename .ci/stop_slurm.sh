#!/usr/bin/env bash
# Stop the single-node Slurm started by .ci/start_slurm.sh: slurmctld and
# slurmd (via `scontrol shutdown`, falling back to their pid files), then
# munged.  Idempotent: does nothing for daemons that are not running.
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

log() { echo "[stop_slurm] $*" >&2; }
running() { pgrep -x "$1" >/dev/null 2>&1; }

# wait_gone NAME SECONDS: wait until no process called NAME is left.
wait_gone() {
    local _
    for _ in $(seq 1 "$2"); do
        running "$1" || return 0
        sleep 1
    done
    ! running "$1"
}

# stop_by_pidfile NAME PIDFILE: SIGTERM the daemon recorded in PIDFILE.
stop_by_pidfile() {
    local pid
    if [[ -r "$2" ]]; then
        pid="$(cat "$2")"
        if [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(ps -o comm= -p "$pid" 2>/dev/null)" == "$1" ]]; then
            log "sending SIGTERM to $1 (pid $pid)"
            kill "$pid" 2>/dev/null || true
        fi
    fi
}

[[ "$(id -u)" -eq 0 ]] || {
    echo "[stop_slurm] ERROR: must be run as root" >&2
    exit 1
}

if running slurmctld; then
    log "scontrol shutdown"
    scontrol shutdown >/dev/null 2>&1 || true
    wait_gone slurmctld 30 || stop_by_pidfile slurmctld /run/slurmctld.pid
fi
if running slurmd; then
    # slurmctld stops the slurmds itself; this covers a slurmd without one.
    wait_gone slurmd 10 || stop_by_pidfile slurmd /run/slurmd.pid
fi

if running munged; then
    log "stopping munged"
    stop_by_pidfile munged /run/munge/munged.pid
fi

failed=()
for d in slurmctld slurmd munged; do
    wait_gone "$d" 30 || failed+=("$d")
done
if ((${#failed[@]})); then
    echo "[stop_slurm] ERROR: still running: ${failed[*]}" >&2
    exit 1
fi
log "Slurm and munge are stopped"
