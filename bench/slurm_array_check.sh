#!/usr/bin/env bash
# Run the README's Slurm job-array script, as written, on two sample subjects (2 mm).
#
#   bench/slurm_array_check.sh [FOLDER]     (needs a running Slurm: .ci/start_slurm.sh)
#
# Only the paths and the array size, CPUs and memory are changed (sed), so that the script
# that users copy is the one that runs.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
folder="${1:-$(mktemp -d /tmp/bids_dl_array.XXXXXX)}"
mkdir -p "$folder"
export PATH="$repo/.venv/bin:$PATH"

bids_dl-sample "$folder/bids" --subjects 2 --small --no-lesions
awk '/^#!\/bin\/bash$/ && !done { on = 1 } on && /^```$/ { on = 0; done = 1 } on' \
    "$repo/README.md" >"$folder/array.sh"
sed -i -e "s|--array=1-200%50|--array=1-2|" -e "s|--cpus-per-task=4 --mem=8G|--cpus-per-task=2 --mem=4G|" \
    -e "s|^bids=/data/bids\( .*\)\{0,1\}$|bids=$folder/bids\1|" \
    -e "s|^out=/data/derivatives/bids_dl\( .*\)\{0,1\}$|out=$folder/out\1|" \
    -e "s|^work=/scratch/.*/bids_dl_work\( .*\)\{0,1\}$|work=$folder/work\1|" "$folder/array.sh"
if grep -nE "^(bids|out|work)=/(data|scratch)/" "$folder/array.sh"; then
    echo "the README's job-array script changed: these paths were not replaced" >&2
    exit 1
fi
echo "== the README's script, with paths and sizes changed:"
cat "$folder/array.sh"
sbatch --wait -o "$folder/task-%a.log" "$folder/array.sh"
bids_dl "$folder/bids" "$folder/out" group
for label in 01 02; do
    test -f "$folder/out/sub-$label/anat/sub-${label}_desc-brain_mask.nii.gz"
    test -f "$folder/out/sub-$label.html"
done
echo "PASS: both array tasks wrote their derivatives; group table $folder/out/phenotype/anatomical.tsv"
