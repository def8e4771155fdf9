#!/usr/bin/env bash
# Build and run Singularity.def without apptainer: a debootstrap chroot stands in for the image.
#
#   sudo bench/singularity_chroot_check.sh [options] [CHROOT_DIR]   (default /tmp/bids_dl_chroot)
#
# What it does, as apptainer would with the same recipe:
#   1. bootstrap  debootstrap --variant=minbase OSVersion CHROOT_DIR MirrorURL (header of the
#                 recipe); a folder bootstrapped by an earlier run is reused.
#   2. files      copies the %files entries (relative to the build context, the repository root),
#                 like apptainer's "cp -fLr SRC ROOTFS/DST".
#   3. post       runs the %post section, taken from Singularity.def itself, in the chroot with
#                 "/bin/sh -ex" and a clean environment (/proc, /dev, /sys and the host's
#                 resolv.conf bound in). With --wheels DIR (default /opt/wheels, when it exists)
#                 that folder is bound read-only and given to pip as PIP_FIND_LINKS, with a
#                 constraint on the torch wheel found there, so torch comes from disk (a CPU
#                 build) rather than PyPI's multi-GB CUDA build. The host's CA bundle is given
#                 to pip as PIP_CERT (needed behind a TLS-inspecting proxy).
#                 Then %environment, %runscript and %test are written to /.singularity.d as
#                 apptainer does.
#   4. test       runs %test as a non-root uid with HOME=/nonexistent, the whole root
#                 read-only (a read-only bind of CHROOT_DIR; only /tmp, a host folder, is
#                 writable, as in "apptainer run"), without network.
#   5. run        same conditions: bids_dl-sample (1 subject, 2 mm), then the runscript
#                 (bids_dl BIDS_DIR OUT participant ...) and the group level; checks the exit
#                 codes, the derivatives (brain mask, dseg, report) and that no library tried to
#                 write to $HOME or a read-only path.
# Everything is unmounted on exit. Details go to the log (default /tmp/bids_dl_chroot_check.log);
# the terminal gets the phases and a summary. Exit status 0 when every check passed.
#
# Options:
#   --fresh           delete CHROOT_DIR and bootstrap again
#   --skip-build      reuse the chroot as it is: only the test and run phases
#   --context DIR     build context for %files (default: the repository root)
#   --wheels DIR|none local wheels for pip (default: /opt/wheels if it exists, else none)
#   --uid N           uid and gid of the run phases (default 12345)
#   --log FILE        log file
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEF="$REPO_ROOT/Singularity.def"
CONTEXT="$REPO_ROOT"
CHROOT=/tmp/bids_dl_chroot
LOG=/tmp/bids_dl_chroot_check.log
RUN_UID=12345
WHEELS=auto
FRESH=0
SKIP_BUILD=0
PIPELINE_TIMEOUT=3600

while [ $# -gt 0 ]; do
    case "$1" in
        --fresh) FRESH=1 ;;
        --skip-build) SKIP_BUILD=1 ;;
        --context) CONTEXT="$(cd "$2" && pwd)"; shift ;;
        --wheels) WHEELS="$2"; shift ;;
        --uid) RUN_UID="$2"; shift ;;
        --log) LOG="$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) CHROOT="$1" ;;
    esac
    shift
done
CHROOT="$(realpath -m "$CHROOT")"
case "$CHROOT" in
    /|"$REPO_ROOT"|"$REPO_ROOT"/*) echo "refusing chroot folder $CHROOT" >&2; exit 2 ;;
esac
if [ "$WHEELS" = auto ]; then
    if [ -d /opt/wheels ]; then WHEELS=/opt/wheels; else WHEELS=none; fi
fi
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot, mount)" >&2; exit 2; }
[ -f "$DEF" ] || { echo "no $DEF" >&2; exit 2; }

: >"$LOG"
MOUNTS=()
RO_ROOT=""
RUN_TMP=""
RESULTS=()
FAILED=0
SUMMARY_DONE=""
declare -A PHASE_SECONDS=()

say() { printf '%s\n' "$*" | tee -a "$LOG"; }
result() {  # result pass|FAIL what
    RESULTS+=("$1  $2")
    if [ "$1" != pass ]; then FAILED=1; fi
    say "  [$1] $2"
}

mount_tracked() {  # mount_tracked TARGET MOUNT-ARGS...: mount, and unmount on exit
    local target="$1"
    shift
    mount "$@" "$target"
    MOUNTS+=("$target")
}

unmount_all() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTS[i]}" 2>>"$LOG" || umount -R -l "${MOUNTS[i]}" 2>>"$LOG" || true
    done
    MOUNTS=()
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local status=$?
    unmount_all
    if [ -z "$SUMMARY_DONE" ] && [ "$status" != 0 ]; then
        say "== stopped early (exit $status); mounts removed; log $LOG"
    fi
    if [ -n "$RO_ROOT" ]; then rmdir "$RO_ROOT" 2>/dev/null || true; fi
    rm -f "$CHROOT/.post.script"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- reading Singularity.def -------------------------------------------------------------

header() {  # header KEY: the value of a header keyword (before the first section)
    awk -v key="$1" '
        { first = $1 }
        substr(first, 1, 1) == "%" { exit }
        /^[[:space:]]*#/ { next }
        {
            colon = index($0, ":")
            if (colon == 0) next
            name = tolower(substr($0, 1, colon - 1)); gsub(/[[:space:]]/, "", name)
            if (name != tolower(key)) next
            value = substr($0, colon + 1); sub(/#.*/, "", value)
            gsub(/^[[:space:]]+|[[:space:]]+$/, "", value); print value; exit
        }' "$DEF"
}

# section NAME: the body of %NAME, verbatim; as in apptainer, a section starts at any line whose
# first word begins with %.
section() {
    awk -v want="$1" '
        { first = $1 }
        substr(first, 1, 1) == "%" { inside = (tolower(substr(first, 2)) == want); next }
        inside { print }' "$DEF"
}

section_args() {  # section_args NAME: what follows "%NAME" on its line
    awk -v want="$1" '
        { first = $1 }
        substr(first, 1, 1) == "%" && tolower(substr(first, 2)) == want {
            sub(/^[[:space:]]*%[^[:space:]]+[[:space:]]*/, ""); sub(/#.*/, ""); print; exit
        }' "$DEF"
}

script_with_shebang() {  # like apptainer's handleShebangScript: keep a #! line, else #!/bin/sh
    local name="$1" body args
    body="$(section "$name")"
    args="$(section_args "$name")"
    if printf '%s\n' "$body" | sed '/^[[:space:]]*$/d' | head -n 1 | grep -q '^[[:space:]]*#!'; then
        printf '%s\n' "$body" | sed '/^[[:space:]]*$/d' | sed -n '1s/^[[:space:]]*//p'
        printf '%s\n' "$body" | sed '/^[[:space:]]*$/d' | sed '1d'
    else
        printf '#!/bin/sh%s\n\n%s\n' "${args:+ $args}" "$body"
    fi
}

in_chroot_env() {  # the clean environment of a run: "apptainer run --cleanenv" as a user
    printf '%s\n' \
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        "HOME=/nonexistent" "USER=bidsuser" "LOGNAME=bidsuser" "TERM=dumb" \
        "APPTAINER_CONTAINER=$CHROOT" "SINGULARITY_CONTAINER=$CHROOT" \
        "APPTAINER_NAME=$(basename "$CHROOT")" "SINGULARITY_NAME=$(basename "$CHROOT")"
}

run_as_user() {  # run_as_user COMMAND...: non-root, read-only root, no network, env sourced
    local env_args=()
    mapfile -t env_args < <(in_chroot_env)
    # shellcheck disable=SC2016  # expanded by the shell in the chroot
    unshare --net chroot --userspec="$RUN_UID:$RUN_UID" "$RO_ROOT" \
        env -i "${env_args[@]}" /bin/sh -c \
        'for f in /.singularity.d/env/*.sh; do . "$f"; done; exec "$@"' sh "$@"
}

phase_start() { PHASE_NAME="$1"; PHASE_T0=$(date +%s); say "== $1: $2"; }
phase_end() {
    PHASE_SECONDS[$PHASE_NAME]=$(($(date +%s) - PHASE_T0))
    say "   ($PHASE_NAME took ${PHASE_SECONDS[$PHASE_NAME]} s)"
}

say "bids_dl Singularity.def chroot check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
context_state="$(git -C "$CONTEXT" rev-parse --short HEAD 2>/dev/null || echo 'not git')"
if [ -n "$(git -C "$CONTEXT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    context_state="$context_state + uncommitted changes"
fi
say "recipe $DEF; context $CONTEXT ($context_state); chroot $CHROOT; log $LOG"

BOOTSTRAP="$(header bootstrap)"
OSVERSION="$(header osversion)"
MIRROR="$(header mirrorurl)"
if [ "$BOOTSTRAP" != debootstrap ] || [ -z "$OSVERSION" ] || [ -z "$MIRROR" ]; then
    say "the recipe's header is not 'Bootstrap: debootstrap' with OSVersion and MirrorURL"
    exit 1
fi
MARKER="$CHROOT/.bids_dl_check_bootstrapped"

# --- 1. bootstrap ------------------------------------------------------------------------

if [ "$SKIP_BUILD" = 0 ]; then
    phase_start bootstrap "debootstrap --variant=minbase $OSVERSION $CHROOT $MIRROR"
    if [ "$FRESH" = 1 ] && [ -e "$CHROOT" ]; then
        if findmnt -rn -o TARGET | grep -q "^$CHROOT/"; then
            say "   something is mounted under $CHROOT; not deleting it"; exit 1
        fi
        rm -rf --one-file-system "$CHROOT"
    fi
    if [ -f "$MARKER" ]; then
        say "   reusing $CHROOT (bootstrapped $(cat "$MARKER"))"
    else
        if [ -n "$(ls -A "$CHROOT" 2>/dev/null)" ] && [ ! -x "$CHROOT/usr/bin/apt-get" ]; then
            say "   $CHROOT exists and is not a bootstrapped system: use --fresh or another folder"
            exit 1
        fi
        if ! command -v debootstrap >/dev/null; then
            say "   installing debootstrap"
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends debootstrap; } >>"$LOG" 2>&1
        fi
        debootstrap --variant=minbase "$OSVERSION" "$CHROOT" "$MIRROR" >>"$LOG" 2>&1
        date -u +%Y-%m-%dT%H:%M:%SZ >"$MARKER"
    fi
    phase_end

    # --- 2. files ------------------------------------------------------------------------
    phase_start files "%files from $CONTEXT"
    # A rebuild starts /opt/bids_dl afresh (the rest of a reused chroot stays).
    rm -rf "$CHROOT/opt/bids_dl" "$CHROOT/.singularity.d"
    while read -r src dst _; do
        [ -n "$src" ] || continue
        case "$src" in \#*) continue ;; esac
        dst="${dst:-$src}"
        case "$src" in /*) ;; *) src="$CONTEXT/$src" ;; esac
        [ -e "$src" ] || { say "   %files: no $src"; exit 1; }
        target="$CHROOT/${dst#/}"
        rm -rf "$target"
        if [ "${dst%/}" != "$dst" ]; then  # like apptainer: "dir/" is created whole
            mkdir -p "$target"
        else
            mkdir -p "$(dirname "$target")"
        fi
        cp -fLr "$src" "$target"
        say "   $src -> $dst"
    done < <(section files)
    phase_end

    # --- 3. post -------------------------------------------------------------------------
    phase_start post "%post in the chroot (/bin/sh -ex, clean environment)"
    mount_tracked "$CHROOT/proc" -t proc proc
    mount_tracked "$CHROOT/sys" --rbind /sys
    mount --make-rslave "$CHROOT/sys"
    mount_tracked "$CHROOT/dev" --rbind /dev
    mount --make-rslave "$CHROOT/dev"
    if [ -L "$CHROOT/etc/resolv.conf" ] || [ ! -f "$CHROOT/etc/resolv.conf" ]; then
        rm -f "$CHROOT/etc/resolv.conf"
        : >"$CHROOT/etc/resolv.conf"
    fi
    mount_tracked "$CHROOT/etc/resolv.conf" --bind /etc/resolv.conf
    staging="$CHROOT/run/bids_dl_check"
    mkdir -p "$staging/wheels"
    post_env=(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "HOME=/root" "TERM=dumb"
        "APPTAINER_ENVIRONMENT=/.singularity.d/env/91-environment.sh"
        "SINGULARITY_ENVIRONMENT=/.singularity.d/env/91-environment.sh"
        "APPTAINER_LABELS=/.build.labels" "SINGULARITY_LABELS=/.build.labels"
        "PIP_DEFAULT_TIMEOUT=180" "PIP_DISABLE_PIP_VERSION_CHECK=1"
    )
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cp /etc/ssl/certs/ca-certificates.crt "$staging/ca-certificates.crt"
        post_env+=("PIP_CERT=/run/bids_dl_check/ca-certificates.crt")
    fi
    if [ "$WHEELS" != none ]; then
        mount_tracked "$staging/wheels" --bind "$WHEELS"
        mount -o remount,bind,ro "$staging/wheels"
        post_env+=("PIP_FIND_LINKS=/run/bids_dl_check/wheels")
        torch_wheel="$(find "$WHEELS" -maxdepth 1 -name 'torch-*.whl' | sort -V | tail -n 1)"
        if [ -n "$torch_wheel" ]; then
            torch_version="$(basename "$torch_wheel" | cut -d- -f2)"
            echo "torch==$torch_version" >"$staging/constraints.txt"
            post_env+=("PIP_CONSTRAINT=/run/bids_dl_check/constraints.txt")
            say "   torch from $torch_wheel (constraint torch==$torch_version)"
        fi
    fi
    mkdir -p "$CHROOT/.singularity.d/env"
    section post >"$CHROOT/.post.script"
    post_args="$(section_args post)"
    case " $post_args " in
        *" -c "*) post_cmd=(/bin/sh -ex -c "${post_args#*-c } /.post.script") ;;
        *) post_cmd=(/bin/sh -ex /.post.script) ;;
    esac
    say "   ${post_cmd[*]} ($(wc -l <"$CHROOT/.post.script") lines from Singularity.def)"
    if (cd / && chroot "$CHROOT" env -i "${post_env[@]}" "${post_cmd[@]}") >>"$LOG" 2>&1; then
        result pass "%post ran (exit 0)"
    else
        result FAIL "%post failed: see $LOG"
        exit 1
    fi
    rm -f "$CHROOT/.post.script"
    unmount_all
    rm -rf "$staging"
    # apptainer's insertMetadata: %environment, %runscript, %test, labels from %post.
    printf '#!/bin/sh\n\n%s\n' "$(section environment)" \
        >"$CHROOT/.singularity.d/env/90-environment.sh"
    script_with_shebang runscript >"$CHROOT/.singularity.d/runscript"
    script_with_shebang test >"$CHROOT/.singularity.d/test"
    chmod 755 "$CHROOT/.singularity.d/env/90-environment.sh" "$CHROOT/.singularity.d/runscript" \
        "$CHROOT/.singularity.d/test"
    section help >"$CHROOT/.singularity.d/runscript.help"
    section labels >"$CHROOT/.singularity.d/labels.txt"
    rm -f "$CHROOT/.build.labels"
    say "   image size: $(du -sh --exclude=proc --exclude=sys --exclude=dev "$CHROOT" | cut -f1)" \
        "(/opt/bids_dl $(du -sh "$CHROOT/opt/bids_dl" | cut -f1))"
    phase_end
elif [ ! -x "$CHROOT/.singularity.d/runscript" ]; then
    say "--skip-build: $CHROOT has not been built"
    exit 1
fi

# --- 4./5. read-only root, non-root user, no network ---------------------------------------

phase_start test "%test as uid $RUN_UID, HOME=/nonexistent, read-only root, no network"
RO_ROOT="$(mktemp -d /tmp/bids_dl_chroot_ro.XXXXXX)"
RUN_TMP="$(mktemp -d /tmp/bids_dl_chroot_tmp.XXXXXX)"
chmod 1777 "$RUN_TMP"
mount_tracked "$RO_ROOT" --bind "$CHROOT"
mount -o remount,bind,ro "$RO_ROOT"
mount_tracked "$RO_ROOT/proc" -t proc proc
mount_tracked "$RO_ROOT/dev" --rbind /dev
mount --make-rslave "$RO_ROOT/dev"
mount_tracked "$RO_ROOT/tmp" --bind "$RUN_TMP"
# apptainer adds the user to the container's passwd and group files
passwd_file="$RUN_TMP/.passwd"
group_file="$RUN_TMP/.group"
{
    cat "$CHROOT/etc/passwd"
    echo "bidsuser:x:$RUN_UID:$RUN_UID:bids_dl check:/nonexistent:/bin/sh"
} >"$passwd_file"
{ cat "$CHROOT/etc/group"; echo "bidsuser:x:$RUN_UID:"; } >"$group_file"
chmod 644 "$passwd_file" "$group_file"
mount_tracked "$RO_ROOT/etc/passwd" --bind "$passwd_file"
mount_tracked "$RO_ROOT/etc/group" --bind "$group_file"

if chroot "$RO_ROOT" /bin/sh -c 'touch /opt/bids_dl/.probe || touch /.probe' 2>>"$LOG"; then
    result FAIL "the root is writable: the read-only simulation does not hold"
else
    result pass "root and /opt are read-only (even for root)"
fi
# shellcheck disable=SC2016  # expanded in the chroot
if run_as_user /bin/sh -c '[ ! -e "$HOME" ] && [ "$(id -u)" != 0 ] && id' >>"$LOG" 2>&1; then
    result pass "runs as uid $RUN_UID with HOME=/nonexistent (absent)"
else
    result FAIL "the user environment is not as intended"
fi
RUN_LOG_START=$(wc -l <"$LOG")
if run_as_user /.singularity.d/test >>"$LOG" 2>&1; then
    result pass "%test passed"
else
    result FAIL "%test failed: see $LOG"
fi
version="$(run_as_user bids_dl --version 2>>"$LOG" | awk '{print $NF}')"
label="$(awk '$1 == "Version" {print $2}' "$CHROOT/.singularity.d/labels.txt")"
if [ -n "$version" ] && [ "$version" = "$label" ]; then
    result pass "%labels Version $label = bids_dl --version"
else
    result FAIL "%labels Version '$label' but bids_dl --version says '$version'"
fi
phase_end

phase_start run "bids_dl-sample, then the runscript (participant 01, 2 mm), then group"
run_status=0
run_as_user bids_dl-sample /tmp/s --subjects 1 --small --no-lesions >>"$LOG" 2>&1 || run_status=$?
if [ "$run_status" = 0 ] && [ -f "$RUN_TMP/s/dataset_description.json" ]; then
    result pass "bids_dl-sample wrote a dataset"
else
    result FAIL "bids_dl-sample exit $run_status"
fi
t0=$(date +%s)
run_status=0
run_as_user timeout --foreground "$PIPELINE_TIMEOUT" /.singularity.d/runscript /tmp/s /tmp/out participant \
    -w /tmp/work --nprocs 2 --omp-nthreads 2 --participant-label 01 >>"$LOG" 2>&1 || run_status=$?
say "   participant level: exit $run_status after $(($(date +%s) - t0)) s"
if [ "$run_status" = 0 ]; then
    result pass "runscript participant level exit 0"
else
    result FAIL "runscript participant level exit $run_status"
fi
for output in sub-01/anat/sub-01_desc-brain_mask.nii.gz sub-01/anat/sub-01_dseg.nii.gz \
    sub-01/anat/sub-01_desc-preproc_T1w.nii.gz sub-01.html dataset_description.json; do
    if [ -s "$RUN_TMP/out/$output" ]; then
        result pass "derivative $output"
    else
        result FAIL "missing derivative $output"
    fi
done
if grep -q '"Container"' "$RUN_TMP/out/dataset_description.json" 2>/dev/null; then
    result pass "dataset_description.json names the container (GeneratedBy.Container)"
else
    result FAIL "dataset_description.json has no GeneratedBy.Container"
fi
run_status=0
run_as_user /.singularity.d/runscript /tmp/s /tmp/out group >>"$LOG" 2>&1 || run_status=$?
if [ "$run_status" = 0 ] && [ -s "$RUN_TMP/out/phenotype/anatomical.tsv" ]; then
    result pass "group level exit 0, phenotype/anatomical.tsv"
else
    result FAIL "group level exit $run_status"
fi
# Any attempt to write to $HOME or to the read-only image shows in the messages.
write_errors="$(tail -n "+$((RUN_LOG_START + 1))" "$LOG" | grep -i -E \
    'read-only file system|/nonexistent|permission denied|not a writable|is not writable|cannot create' |
    grep -v -F '[pass]' || true)"
if [ -z "$write_errors" ]; then
    result pass "no write to \$HOME or to a read-only path in the messages"
else
    result FAIL "writes to \$HOME or a read-only path (log lines below)"
    printf '%s\n' "$write_errors" | head -n 20 | sed 's/^/      /' | tee -a "$LOG"
fi
list_dir() {  # list_dir DIR DEPTH: the entries below DIR on one line
    find "$1" -mindepth 1 -maxdepth "$2" ! -name .passwd ! -name .group -printf '%P\n' |
        sort | tr '\n' ' '
}
say "   written under /tmp by the runs: $(list_dir "$RUN_TMP" 1)"
if [ -d "$RUN_TMP/bids_dl-$RUN_UID" ]; then
    say "   in the cache folder bids_dl-$RUN_UID: $(list_dir "$RUN_TMP/bids_dl-$RUN_UID" 1)"
fi
phase_end

# --- summary ------------------------------------------------------------------------------

say ""
say "== summary ($(if [ "$FAILED" = 0 ]; then echo PASS; else echo FAIL; fi))"
for name in bootstrap files post test run; do
    if [ -n "${PHASE_SECONDS[$name]:-}" ]; then say "   $name: ${PHASE_SECONDS[$name]} s"; fi
done
for line in "${RESULTS[@]}"; do say "   $line"; done
say "   outputs kept in $RUN_TMP/out; log $LOG"
SUMMARY_DONE=1
exit "$FAILED"
