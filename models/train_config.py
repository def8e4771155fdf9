"""The settings of a training run: task, data and split, resolution, network, schedule, seed.

Read from a JSON file (``bids_dl-train CONFIG.json``) and copied whole into the model card.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("brain_mask", "structures", "tumor", "wmh")
LESION_TASKS = ("tumor", "wmh")


@dataclass
class TrainConfig:
    """Everything that defines a training run (copied into the model card)."""

    name: str
    task: str  # one of TASKS
    train_subjects: list[str]
    validation_subjects: list[str]
    test_subjects: list[str]
    source: str = "synthetic"  # or "bids"
    # synthetic source
    label_maps: str = ""  # folder of training_seg_XX.nii.gz
    generation_labels: str = ""  # .npy: label values
    generation_classes: str = ""  # .npy: their intensity class
    # bids source: sub-XX/anat/sub-XX*_<image_suffix>.nii.gz with sub-XX/anat/sub-XX*_dseg.nii.gz
    # (FreeSurfer values for structures, any non-zero value for brain_mask) in labels_dir
    bids_dir: str = ""
    labels_dir: str = ""
    image_suffix: str = "T1w"
    version: str = "0.1.0"
    voxel_size_mm: float = 2.0
    sample_shape: tuple[int, int, int] = (128, 128, 128)
    features: tuple[int, ...] = (8, 16, 32, 64)
    residual: bool = False
    norm: str = "instance"
    iterations: int = 1000
    batch_size: int = 1
    learning_rate: float = 1e-3
    validation_every: int = 100
    validation_samples: int = 4
    checkpoint_every: int = 50
    seed: int = 1
    threads: int = 2
    device: str = "auto"  # "auto" (CUDA when torch sees a GPU), "cpu" or "cuda"
    #: worker processes that synthesise the training samples (``models/sample_workers.py``);
    #: 0 draws them in the training process, whose stream a checkpoint then resumes exactly
    sample_workers: int = 0
    #: crop each label map to its brain (plus this margin, in voxels) before sampling windows, so
    #: windows are centred on the brain (inference then centres them on the brain mask); None
    #: keeps the whole head and its surroundings
    brain_crop_margin: int | None = None
    synthesis: dict = field(default_factory=dict)
    #: lesion tasks: the input contrasts, in channel order (e.g. FLAIR, T1ce, T1w, T2w), and the
    #: simulator's settings (``LesionParameters``)
    channels: list[str] = field(default_factory=list)
    lesions: dict = field(default_factory=dict)
    #: start from this bundle's weights (fine-tuning); the architecture must match
    init_from: str = ""
    #: label post-processing written into the card (``postprocessing.POSTPROCESSING``)
    postprocessing: str = ""
    #: lesions smaller than this are dropped at inference (card ``inputs.min_lesion_mm3``)
    min_lesion_mm3: float = 0.0
    #: model-grid axes mirrored at inference, predictions averaged (card
    #: ``inputs.test_time_mirror_axes``; 0 is left-right)
    test_time_mirror_axes: list[int] = field(default_factory=list)
    #: lesion tasks with the bids source: share of training samples drawn from the lesion
    #: simulator (label maps ``synthetic_subjects`` of ``label_maps``, settings ``lesions``)
    #: instead, so that fine-tuning on a few real cases keeps what synthetic training taught
    synthetic_share: float = 0.0
    synthetic_subjects: list[str] = field(default_factory=list)
    #: tumour task: labels decoded by those nested regions at inference instead of the argmax
    #: (card ``inputs.nested_regions``, ``postprocessing.decode_nested_regions``)
    brats_region_decoding: bool = False
    #: tumour task with ``synthetic_share``: real samples are scored on the whole tumour alone
    #: (tumour against the rest, ``whole_tumor_loss``), so how the tumour divides into core,
    #: edema and enhancing is learnt from the simulated samples only; fine-tuning on three
    #: real cases otherwise raised the whole tumour and lowered the core
    real_whole_tumor_only: bool = False

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        for key in ("sample_shape", "features"):
            if content.get(key) is not None:
                content[key] = tuple(content[key])
        return cls(**content)

    def architecture(self, out_channels: int) -> dict:
        """The card's ``architecture`` entry of the U-Net this config trains."""
        return {
            "name": "UNet3D",
            "args": {
                "in_channels": max(len(self.channels), 1),
                "out_channels": out_channels,
                "features": list(self.features),
                "norm": self.norm,
                "residual": self.residual,
            },
        }
