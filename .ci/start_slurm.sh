#!/usr/bin/env bash
# Bring up a real single-node Slurm (munged + slurmctld + slurmd) on localhost,
# without systemd, so that nipype's SLURM / SLURMGraph plugins can submit jobs.
#
# Idempotent: installs packages only if missing, never starts a second copy of
# a running daemon, and rewrites slurm.conf only when its content changes (in
# which case the running Slurm daemons are restarted).  Must run as root.
#
# Environment knobs:
#   SLURM_START_TIMEOUT   seconds to wait for the node to become idle (60)
#   SLURM_SKIP_SMOKE_TEST set to 1 to skip the final `sbatch --wait` test job
#
# Stop everything again with .ci/stop_slurm.sh.
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

NODE_NAME=localhost
PARTITION=debug
CLUSTER_NAME=bidsdl
SLURM_CONF_DIR=/etc/slurm
SLURM_CONF="${SLURM_CONF_DIR}/slurm.conf"
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
CTLD_PIDFILE=/run/slurmctld.pid
SLURMD_PIDFILE=/run/slurmd.pid
MUNGE_KEY=/etc/munge/munge.key
TIMEOUT="${SLURM_START_TIMEOUT:-60}"

log() { echo "[start_slurm] $*" >&2; }

dump_logs() {
    local f
    for f in /var/log/munge/munged.log "${LOG_DIR}/slurmctld.log" "${LOG_DIR}/slurmd.log"; do
        if [[ -r "$f" ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
}

die() {
    echo "[start_slurm] ERROR: $*" >&2
    dump_logs
    exit 1
}

running() { pgrep -x "$1" >/dev/null 2>&1; }
ctld_up() { [[ "$(scontrol ping 2>/dev/null)" == *"is UP"* ]]; }

[[ "$(id -u)" -eq 0 ]] || die "must be run as root"

# Serialise concurrent invocations (e.g. two CI steps calling this at once).
# fd 9 is closed for the daemons below, or they would hold the lock forever.
mkdir -p /run/lock
exec 9>/run/lock/bids_dl_start_slurm.lock
flock -w 600 9 || die "could not take /run/lock/bids_dl_start_slurm.lock"

# --------------------------------------------------------------------------
# 1. Packages
# --------------------------------------------------------------------------
missing=()
command -v munged >/dev/null 2>&1 || missing+=(munge)
for bin in slurmctld slurmd sbatch squeue sinfo scontrol; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        missing+=(slurm-wlm)
        break
    fi
done
if ((${#missing[@]})); then
    log "installing ${missing[*]} ..."
    apt-get -o DPkg::Lock::Timeout=300 update -qq ||
        die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
        install -y -qq "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
fi
for bin in munged munge unmunge slurmctld slurmd sbatch squeue sinfo scontrol; do
    command -v "$bin" >/dev/null 2>&1 || die "$bin not found after installation"
done
getent passwd munge >/dev/null || die "user 'munge' does not exist"

# --------------------------------------------------------------------------
# 2. munge: directories, key, daemon
# --------------------------------------------------------------------------
# munged insists on these owners/modes (and refuses group/other-writable dirs).
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s "$MUNGE_KEY" ]]; then
    log "creating munge key $MUNGE_KEY"
    rm -f "$MUNGE_KEY"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$MUNGE_KEY"
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
fi
chown munge:munge "$MUNGE_KEY"
chmod 0400 "$MUNGE_KEY"

if running munged; then
    log "munged already running"
else
    log "starting munged"
    # --force: the daemon is not running, so any leftover socket/lock is stale.
    runuser -u munge -- munged --force </dev/null >/dev/null 2>&1 9>&- ||
        die "munged failed to start"
fi
for _ in $(seq 1 20); do
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        break
    fi
    sleep 0.5
done
munge -n | unmunge >/dev/null || die "munge credential round-trip failed"

# --------------------------------------------------------------------------
# 3. slurm.conf
# --------------------------------------------------------------------------
install -d -m 0755 "$SLURM_CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"

hw="$(slurmd -C 2>/dev/null | head -n 1)" || true
[[ "$hw" == NodeName=* ]] || die "'slurmd -C' gave no hardware description: '$hw'"
# e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24036"
hw_fields="$(tr ' ' '\n' <<<"$hw" |
    grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' |
    tr '\n' ' ')"
hw_fields="${hw_fields% }"
[[ "$hw_fields" == *CPUs=* && "$hw_fields" == *RealMemory=* ]] ||
    die "could not parse CPUs/RealMemory from 'slurmd -C': '$hw'"

new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
cat >"$new_conf" <<EOF
# Generated by .ci/start_slurm.sh -- single-node CI cluster, do not edit.
ClusterName=${CLUSTER_NAME}
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without this, a job that does not ask for --mem gets the WHOLE node's memory
# (CR_*_Memory) and every other job pends with Reason=Resources.
DefMemPerCPU=1024
SchedulerType=sched/backfill
# The default batch_sched_delay=3 makes every sbatch wait up to ~3 s for the
# next scheduling pass; 0 starts a job on an idle node within ~1 s.
SchedulerParameters=batch_sched_delay=0
# Cancel jobs whose --dependency=afterok can never be met (e.g. nipype
# SLURMGraph children of a failed node) instead of leaving them PENDING forever
# with Reason=DependencyNeverSatisfied.  (Since Slurm 20.02 this lives in
# DependencyParameters; in SchedulerParameters it is silently ignored.)
DependencyParameters=kill_invalid_depend
ReturnToService=2
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldPidFile=${CTLD_PIDFILE}
SlurmdPidFile=${SLURMD_PIDFILE}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# One line per finished job (its TRES: the CPUs and memory it was given), read by the tests.
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG_DIR}/jobcomp.log
MailProg=/bin/true
InactiveLimit=0
KillWait=30
MinJobAge=300
SlurmctldTimeout=120
SlurmdTimeout=300
Waittime=0
NodeName=${NODE_NAME} NodeAddr=127.0.0.1 ${hw_fields} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE_NAME} Default=YES MaxTime=INFINITE State=UP
EOF

if [[ -f "$SLURM_CONF" ]] && cmp -s "$new_conf" "$SLURM_CONF"; then
    log "slurm.conf unchanged"
else
    if running slurmctld || running slurmd; then
        log "slurm.conf changed: restarting the running Slurm daemons"
        scontrol shutdown >/dev/null 2>&1 || true
        for _ in $(seq 1 30); do
            running slurmctld || running slurmd || break
            sleep 1
        done
        if running slurmctld || running slurmd; then
            die "old Slurm daemons did not stop; run .ci/stop_slurm.sh"
        fi
    fi
    install -m 0644 "$new_conf" "$SLURM_CONF"
    log "wrote $SLURM_CONF"
fi

# --------------------------------------------------------------------------
# 4. Slurm daemons (they daemonize themselves)
# --------------------------------------------------------------------------
if running slurmctld; then
    log "slurmctld already running"
else
    log "starting slurmctld"
    slurmctld </dev/null >>"${LOG_DIR}/slurmctld.stdout" 2>&1 9>&- ||
        die "slurmctld failed to start"
fi
for _ in $(seq 1 "$TIMEOUT"); do
    ctld_up && break
    sleep 1
done
ctld_up || die "slurmctld does not answer 'scontrol ping'"

if running slurmd; then
    log "slurmd already running"
else
    log "starting slurmd"
    # -N: the node is called 'localhost' in slurm.conf, not $(hostname).
    slurmd -N "$NODE_NAME" </dev/null >>"${LOG_DIR}/slurmd.stdout" 2>&1 9>&- ||
        die "slurmd failed to start"
fi

# --------------------------------------------------------------------------
# 5. Wait for the node to be usable
# --------------------------------------------------------------------------
state=""
deadline=$((SECONDS + TIMEOUT))
while :; do
    state="$(sinfo -h -N -n "$NODE_NAME" -o '%T' 2>/dev/null | head -n 1)" || state=""
    case "$state" in
    idle | mixed | allocated | completing) break ;;
    down* | drain* | fail*)
        log "node state '$state': resuming"
        scontrol update nodename="$NODE_NAME" state=resume >/dev/null 2>&1 || true
        ;;
    esac
    ((SECONDS < deadline)) || die "node ${NODE_NAME} not usable after ${TIMEOUT}s (state '${state}')"
    sleep 1
done
log "node ${NODE_NAME} is ${state}"

if [[ "${SLURM_SKIP_SMOKE_TEST:-0}" != 1 ]]; then
    timeout "$TIMEOUT" sbatch --wait --quiet -J slurm-smoke-test -o /dev/null \
        -c 1 --mem=100M --wrap true ||
        die "smoke-test job (sbatch --wait --wrap true) did not complete"
    log "smoke-test job completed"
fi

sinfo
log "Slurm is up"
