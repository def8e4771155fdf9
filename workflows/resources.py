"""Memory each kind of node declares (GB): what nipype and Slurm reserve for it.

Measured with ``bench/bench_node_memory.py``: every node of a finished run re-run alone in a
fresh process, as a Slurm job runs it, its peak resident memory read from the kernel
(``bench/results/node_memory.tsv``: the 1 mm sample, ~12 M voxels per image, 2 threads;
that table came from ``ru_maxrss`` of each child of a small parent, at most ~0.08 GB high).
Declared: the measured peak plus ~25 %, at least 0.25 GB (a job's Python alone takes ~0.1).
Image-bound steps grow with the voxel count; a 0.8 mm scan has about twice as many voxels.
"""

from __future__ import annotations

import numpy as np

MEM_GB = {
    "conform": 0.25,  # measured 0.15
    "n4": 1.1,  # 0.86
    "skull_strip": 0.35,  # 0.28
    "registration": 1.3,  # 1.02
    "tissues": 1.6,  # 1.26 (Atropos)
    "resample": 1.15,  # 0.92 (template-space T1w and labels)
    "coregister": 1.2,  # 0.94 (FLAIR, ce-T1w, T2w to the T1w)
    "measures": 0.55,  # 0.41
    "figure": 0.75,  # 0.58
    "light": 0.25,  # 0.08 (writing a derivative, merging measures)
    # classical brain extraction (template registration), bench/bench_anat.py: 1.14
    "brain_extraction": 1.4,
    # deep-learning nodes (fresh processes, VmHWM): brain mask 0.66 on the sample and 0.70 on
    # a 256^3 head; tumour 0.93, WMH 0.69 on the sample (0.78 / 0.93 for bids_dl-models
    # evaluate on a real BraTS case / a simulated 256^3 head); structures 1.14 for one
    # inference in a fresh process on a 256^3 test head (bench/eval_models.py structures,
    # shipped model 0.1.0).
    "model": 0.9,
    "lesion_model": 1.2,
    "structures": 1.45,
    # diffusion: measured on the REAL XA30 series (72x72x39x21, bench/results/node_memory_dwi.tsv)
    # MP-PCA 0.17, motion correction 0.32, tensor fit 0.23, b=0 registration 0.37, the network
    # 0.44, template resampling 0.64; declared for series up to ~128x128x60x70 (0.28 GB in
    # float32), which these steps hold two to four times over (float64 inside dipy)
    "dwi_denoise": 1.5,
    "dwi_motion": 1.2,
    "dwi_tensor": 1.2,
    # ASL, measured on the REAL XA30 series (64x64x12x7, bench/results/node_memory_asl.tsv):
    # motion correction 0.28, M0 and CBF 0.09, resampling T1w maps onto the ASL grid 0.31;
    # declared for series up to ~128x128x40x100 (0.26 GB in float32), held a few times over
    "asl_motion": 1.0,
    "asl_cbf": 0.6,
    "asl_resample": 0.4,
}

#: BOLD steps hold the run: they declare a base plus their copies of it (float32), + 25 %.
#: Measured on the sample's SIMULATED 60-volume run (54x67x58, 52 MB in float32;
#: bench/results/node_memory_bold.tsv): motion correction 0.42 GB, confounds 0.29, the
#: non-steady-state detection 0.20, the atlas connectome 0.81 (nilearn's masker on the
#: template-space run), resampling onto the template 0.68 and onto the T1w 0.45 (the output
#: array filled in place: a list of volumes stacked at the end took 1.07 and 0.64).
BOLD_BASE_GB = 0.3
BOLD_RUN_COPIES = 4
#: resampling holds the run once and its output (a template volume per input volume)
BOLD_RESAMPLE_BASE_GB = 0.5
TEMPLATE_VOLUME_GB = 99 * 117 * 95 * 4 / 1e9
MEMORY_MARGIN = 1.25


def bold_mem_gb(shape: tuple[int, ...], resampled: bool = False) -> float:
    """What a BOLD step on a run of ``shape`` (x, y, z, volumes) declares; ``resampled`` for
    the steps that write the run on the template (or T1w) grid."""
    run_gb = float(np.prod(shape)) * 4 / 1e9
    if resampled:
        need = BOLD_RESAMPLE_BASE_GB + run_gb + shape[3] * TEMPLATE_VOLUME_GB
    else:
        need = BOLD_BASE_GB + BOLD_RUN_COPIES * run_gb
    return round(max(need * MEMORY_MARGIN, MEM_GB["light"]), 2)


#: PET steps on the frames (motion correction, time-activity curves) hold the series a few
#: times over (float32) besides ANTs' copies of one frame and the reference. Measured on the
#: sample's SIMULATED 9-frame PET (81x98x86, 25 MB in float32; bench/results/node_memory_pet.tsv):
#: motion correction 0.41 GB, time-activity curves 0.14; registration to the T1w 0.36 and
#: template resampling 0.64 declare the anatomical steps' figures.
PET_BASE_GB = 0.5
PET_SERIES_COPIES = 4


def pet_mem_gb(shape: tuple[int, ...]) -> float:
    """What a PET step on the frames of ``shape`` (x, y, z[, frames]) declares."""
    series_gb = float(np.prod(shape)) * 4 / 1e9
    return round(max((PET_BASE_GB + PET_SERIES_COPIES * series_gb) * MEMORY_MARGIN,
                     MEM_GB["light"]), 2)  # fmt: skip
