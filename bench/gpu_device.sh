#!/usr/bin/env bash
# One call on a lent GPU machine, prepared: the CUDA check of the shipped models, then the
# structures training and a brain-mask fine-tuning side by side, each stopped at a wall-clock
# limit.
#
#   bench/gpu_device.sh prepare       here: wheels the GPU machine lacks (.whl/), the label
#                                     maps as int16 (same values, 1/3 the size) and a 2 mm
#                                     sample dataset (.device_data/)
#   bench/gpu_device.sh run [MIN]     there, from the repository root (device tool): results
#                                     into $OUT. `prepare` prints what each carry sends with
#                                     the tree (at most 64 MiB): train (carry .whl and
#                                     .device_data/synthseg_label_maps, GPU_CHECK=0), check
#                                     (carry .whl, .whl_check, .device_data/sample and
#                                     GPU_CONFIGS=""), or both when they fit together
#
# The GPU machine has torch, numpy, scipy and safetensors but no nibabel or nipype, and no
# network. The trainings read ../shared/data/synthseg_label_maps (their configs' paths), so
# the run links that path to the carried copy. MIN (default 6.5) is each training's limit.
# GPU_CHECK=0 skips the CUDA check; GPU_CONFIGS names the configs (models/configs/*.json)
# trained side by side into runs/<config> (default "structures_1_gpu brain_mask_2_gpu"; the
# anneal steps: GPU_CONFIGS="structures_2_gpu_anneal brain_mask_3_gpu_anneal"). Carry each
# config's init_from bundle (runs/brain_mask_1_cpu/bundle for brain_mask_2_gpu, and so on).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# training needs nibabel alone (.whl); gpu_check.py also nipype's stack (.whl_check)
check_wheels="nipype==1.11.0 traits==7.3.0 prov==3.2.3 etelemetry==0.3.1 ci-info==0.4.0
looseversion==1.3.0"

prepare() {
    local download=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux1_x86_64)
    "${download[@]}" -d .whl nibabel==5.4.2
    # shellcheck disable=SC2086
    "${download[@]}" -d .whl_check $check_wheels
    .venv/bin/python - <<'EOF'
from pathlib import Path
import shutil
import nibabel as nb
import numpy as np

source = Path("../shared/data/synthseg_label_maps")
target = Path(".device_data/synthseg_label_maps")
shutil.copytree(source / "labels_classes_priors", target / "labels_classes_priors",
                dirs_exist_ok=True)
nb.openers.Opener.default_compresslevel = 9
for path in sorted(source.glob("training_seg_*.nii.gz")):
    image = nb.load(path)
    labels = np.asarray(image.dataobj)
    packed = labels.astype(np.int16)
    if not np.array_equal(packed, labels):
        raise SystemExit(f"{path}: labels do not fit int16")
    copy = nb.Nifti1Image(packed, image.affine, image.header)
    copy.set_data_dtype(np.int16)
    copy.header.set_slope_inter(1, 0)
    nb.save(copy, target / path.name)
print(f"label maps packed into {target}")

# the tumour subject of gpu_check.py's default dataset (written here: it needs nilearn)
from bids_dl.sample import write_sample_dataset

sample = Path(".device_data/sample")
write_sample_dataset(sample, n_subjects=1, voxel_mm=2.0, lesions=True)
shutil.rmtree(sample / "sub-01"), shutil.rmtree(sample / "sub-03")  # kept small: 64 MiB travel
for path in (sample / "sub-02" / "anat").glob("*_T2w.*"):
    path.unlink()
EOF
    du -sh .whl .device_data
    # what a device call sends (limit 64 MiB): the tree plus what it carries
    for carried in ".whl .device_data/synthseg_label_maps" ".whl .whl_check .device_data/sample" \
        ".whl .whl_check .device_data"; do
        # shellcheck disable=SC2086
        echo "carry [$carried]: $({
            git ls-files -z
            git ls-files -z --others --exclude-standard
            find $carried -type f -print0
        } | du -cb --files0-from=- | tail -1 | awk '{print int($1 / 1048576)}') MiB"
    done
}

run() {
    local minutes="${1:-6.5}"
    out="${OUT:-/tmp/gpu_device}"
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl*/*.whl
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . || {
        echo "pip could not install the package; laying it out by hand (setup.cfg package_dir)"
        mkdir -p /tmp/site/bids_dl && cp -r bids_dl/. /tmp/site/bids_dl/
        ln -sfn "$repo/workflows" /tmp/site/bids_dl/workflows
        ln -sfn "$repo/models" /tmp/site/bids_dl/models
    }
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
    mkdir -p ../shared/data
    ln -sfn "$repo/.device_data/synthseg_label_maps" ../shared/data/synthseg_label_maps
    (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) |
        tee "$out/gpu.txt"
    echo "$(nproc) CPUs: $(grep -m1 "model name" /proc/cpuinfo)" | tee -a "$out/gpu.txt"

    [ "${GPU_CHECK:-1}" = 0 ] || [ ! -d .device_data/sample ] || timeout 170 python3 bench/gpu_check.py --bids .device_data/sample --subject 02 --threads 2 \
        --cpu-runs 1 2>&1 | tee "$out/gpu_check.txt" || true

    local train=(python3 -P -c "from bids_dl.models_cli import train_main; train_main()")
    local configs="${GPU_CONFIGS-structures_1_gpu brain_mask_2_gpu}" run pids=()
    for run in $configs; do
        "${train[@]}" "models/configs/$run.json" "runs/$run" --max-minutes "$minutes" \
            >"/tmp/$run.log" 2>&1 &
        pids+=($!)
    done
    [ -z "$configs" ] && return
    (sleep 90 && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv >>"$out/gpu.txt") &
    wait "${pids[@]}" || true
    for run in $configs; do
        mkdir -p "$out/$run"
        tail -c 3000 "/tmp/$run.log" | tr '\r' '\n' | tail -5
        cp "runs/$run/log.tsv" "$out/$run/" || true
        cp "runs/$run/bundle/model.json" "runs/$run/bundle/weights.safetensors" "$out/$run/" ||
            echo "$run: no bundle"
    done
}

case "${1:-}" in
prepare) prepare ;;
run) run "${2:-}" ;;
*)
    echo "usage: $0 prepare | run [MINUTES]" >&2
    exit 2
    ;;
esac
