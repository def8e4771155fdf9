"""Lesion analyses: simulator, missing contrasts, lesion metrics, the workflow end to end."""

from __future__ import annotations

import dataclasses
import json
import logging

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

from bids_dl.inputs import InputError, SubjectInputs, plan_analyses
from bids_dl.models.bundle import load_bundle, save_bundle
from bids_dl.models.card import ModelCard, load_card
from bids_dl.models.inference import segment
from bids_dl.models.labels import LESION_VALUES, TUMOR_REGIONS
from bids_dl.models.lesion_simulation import (
    LesionParameters,
    LesionSynthesiser,
    _dilate,
    lesion_image,
    plant_tumor,
    plant_wmh,
)
from bids_dl.models.losses import batch_loss, soft_dice_loss, whole_tumor_loss
from bids_dl.models.metrics import (
    absolute_volume_difference_percent,
    lesion_detection,
    region_metrics,
)
from bids_dl.models.networks import UNet3D
from bids_dl.models.postprocessing import (
    decode_nested_regions,
    postprocess,
    remove_small_components,
)
from bids_dl.models.registry import shipped_bundles
from bids_dl.models.samplers import MixedSampler, Sampler
from bids_dl.models.synthesis import PairedAugmenter, SynthesisParameters
from bids_dl.models.train import train
from bids_dl.models.train_config import TrainConfig
from bids_dl.models.training_data import brats_region_classes, lookup_tables, make_samplers

#: No artefacts: intensities are the drawn means, so labels and intensities can be compared.
CLEAN = SynthesisParameters(
    intensity_std=(0.0, 0.0), blur_sigma_vox=(0.0, 0.0), bias_std=0.0, log_gamma_std=0.0,
    noise_std=(0.0, 0.0), low_resolution_probability=0.0, contrast_prior_jitter=0.0,
)  # fmt: skip


def _phantom(shape=(48, 48, 48)) -> torch.Tensor:
    """A head-sized toy brain: cortex shell, white matter, two lateral ventricles, at 2 mm."""
    labels = torch.zeros(shape, dtype=torch.long)
    labels[4:-4, 4:-4, 4:-4] = 3  # cortex
    labels[8:-8, 8:-8, 8:-8] = 2  # left white matter
    labels[24:-8, 8:-8, 8:-8] = 41  # right white matter
    labels[18:22, 20:28, 20:28] = 4  # ventricles
    labels[26:30, 20:28, 20:28] = 43
    return labels


def test_simulated_tumours_are_nested_and_stay_in_the_brain():
    labels = _phantom()
    params = LesionParameters(tumor_radius_mm=(12, 14), necrosis_probability=1.0,
                              non_enhancing_probability=0.0)  # fmt: skip
    planted = plant_tumor(labels, 2.0, params, torch.Generator().manual_seed(3))
    values = LESION_VALUES
    core = torch.isin(planted, torch.tensor([values["necrosis"], values["non_enhancing"],
                                             values["enhancing"]]))  # fmt: skip
    assert core.any() and (planted == values["necrosis"]).any()
    assert (planted == values["enhancing"]).any()
    assert not (core & (labels == 0)).any()  # nothing outside the brain
    edema = planted == values["edema"]
    assert torch.isin(labels[edema], torch.tensor([2, 41])).all()  # edema only in white matter
    # the necrotic centre is inside the core: its centroid is farther from the background
    centre = (planted == values["necrosis"]).nonzero().float().mean(0)
    assert core[tuple(centre.round().long())]
    without = dataclasses.replace(params, necrosis_probability=0.0)
    for seed in range(6):  # the shape noise makes the centre's distance negative: no necrosis
        plain = plant_tumor(labels, 2.0, without, torch.Generator().manual_seed(seed))
        assert (plain == values["enhancing"]).any() and not (plain == values["necrosis"]).any()


def test_faint_edema_surrounds_the_bright_edema_and_is_brighter_than_white_matter():
    labels = _phantom()
    params = LesionParameters(tumor_radius_mm=(8, 9), edema_extent=(2.4, 2.5),
                              faint_edema_probability=1.0)  # fmt: skip
    planted = plant_tumor(labels, 2.0, params, torch.Generator().manual_seed(3))
    core_values = [LESION_VALUES[n] for n in ("necrosis", "non_enhancing", "enhancing")]
    core, edema, faint = (torch.isin(planted, torch.tensor(v)) for v in (
        core_values, [LESION_VALUES["edema"]], [LESION_VALUES["faint_edema"]]))  # fmt: skip
    assert edema.any() and faint.any()
    assert torch.isin(labels[faint], torch.tensor([2, 41])).all()
    centre = core.nonzero().float().mean(0)

    def mean_distance(mask):
        return float((mask.nonzero().float() - centre).norm(dim=1).mean())

    assert mean_distance(core) < mean_distance(edema) < mean_distance(faint)
    flair = lesion_image(planted, "FLAIR", params, CLEAN, torch.Generator().manual_seed(0))
    low, high = params.intensities["FLAIR"]["faint_edema"]
    spread = 1 + 2 * params.heterogeneity  # the lesion texture scales intensities around 1
    assert flair[planted == 2].mean() < flair[faint].mean()
    assert low / spread <= flair[faint].mean() <= high * spread
    without = LesionParameters(tumor_radius_mm=(8, 9), edema_extent=(2.4, 2.5))
    plain = plant_tumor(labels, 2.0, without, torch.Generator().manual_seed(3))
    assert not (plain == LESION_VALUES["faint_edema"]).any()  # off by default


def test_cystic_necrosis_is_dark_like_csf_on_flair_bright_on_t2w_and_counts_as_core():
    params = LesionParameters(tumor_radius_mm=(12, 14), necrosis_probability=1.0,
                              cystic_necrosis_probability=1.0)  # fmt: skip
    planted = plant_tumor(_phantom(), 2.0, params, torch.Generator().manual_seed(3))
    cyst = planted == LESION_VALUES["cystic_necrosis"]
    assert cyst.any() and not (planted == LESION_VALUES["necrosis"]).any()
    images = {
        contrast: lesion_image(planted, contrast, params, CLEAN, torch.Generator().manual_seed(0))
        for contrast in ("FLAIR", "T2w")
    }
    white_matter = planted == 2
    assert images["FLAIR"][cyst].mean() < 0.5 * images["FLAIR"][white_matter].mean()
    assert images["T2w"][cyst].mean() > images["T2w"][white_matter].mean()
    config = TrainConfig(name="t", task="tumor", train_subjects=[], validation_subjects=[],
                         test_subjects=[])  # fmt: skip
    _, target, _ = lookup_tables(config)
    assert target[LESION_VALUES["cystic_necrosis"]] == target[LESION_VALUES["necrosis"]] == 1
    plain = plant_tumor(_phantom(), 2.0, LesionParameters(tumor_radius_mm=(12, 14),
                        necrosis_probability=1.0), torch.Generator().manual_seed(3))  # fmt: skip
    assert not (plain == LESION_VALUES["cystic_necrosis"]).any()  # off by default


def test_peripheral_non_enhancing_tumour_lies_outside_the_enhancing_rim_in_edema_tissue():
    """With every rim voxel enhancing, the only non-enhancing tumour is the peripheral kind:
    outside the core, next to it, in white matter, and absent unless asked for."""
    fully_enhancing = dict(tumor_radius_mm=(10, 11), necrosis_probability=1.0,
                           non_enhancing_probability=0.0, enhancing_share=(1.0, 1.0))  # fmt: skip
    params = LesionParameters(
        peripheral_non_enhancing_probability=1.0,
        peripheral_non_enhancing_thickness=(0.3, 0.4),
        **fully_enhancing,
    )
    labels = _phantom()
    planted = plant_tumor(labels, 2.0, params, torch.Generator().manual_seed(3))
    outside = planted == LESION_VALUES["non_enhancing"]
    core = torch.isin(
        planted, torch.tensor([LESION_VALUES["necrosis"], LESION_VALUES["enhancing"]])
    )
    assert outside.any() and core.any()
    assert torch.isin(labels[outside], torch.tensor([2, 41])).all()
    assert _dilate(core, 4)[
        outside
    ].all()  # within 4 voxels (8 mm, 0.4 of an 11 mm radius) of the core
    centre = core.nonzero().float().mean(0)
    radius = {name: float((mask.nonzero().float() - centre).norm(dim=1).mean())
              for name, mask in (("core", core), ("outside", outside))}  # fmt: skip
    assert radius["outside"] > radius["core"]
    plain = plant_tumor(labels, 2.0, LesionParameters(**fully_enhancing),
                        torch.Generator().manual_seed(3))  # fmt: skip
    assert not (plain == LESION_VALUES["non_enhancing"]).any()  # off by default


def test_lesion_intensities_follow_the_labels():
    """Enhancing tumour is the brightest on contrast T1, dark necrosis there; edema and WMH are
    brighter than white matter on FLAIR."""
    generator = torch.Generator().manual_seed(0)
    params = LesionParameters(tumor_radius_mm=(12, 14), necrosis_probability=1.0,
                              non_enhancing_probability=0.0)  # fmt: skip
    labels = plant_wmh(plant_tumor(_phantom(), 2.0, params, generator), 2.0,
                       LesionParameters(deep_lesions=(3, 3)), generator)  # fmt: skip
    t1ce = lesion_image(labels, "T1ce", params, CLEAN, generator)
    flair = lesion_image(labels, "FLAIR", params, CLEAN, generator)

    def mean(image, name_or_value):
        value = LESION_VALUES.get(name_or_value, name_or_value)
        return float(image[labels == value].mean())

    assert mean(t1ce, "enhancing") > mean(t1ce, 2) > mean(t1ce, "necrosis")
    assert mean(flair, "edema") > mean(flair, 2) and mean(flair, "wmh") > mean(flair, 2)


def _synthesiser(seed: int, dropout=(0.0, 0.0)) -> LesionSynthesiser:
    config = TrainConfig(name="t", task="tumor", train_subjects=[], validation_subjects=[],
                         test_subjects=[])  # fmt: skip
    _, target, _ = lookup_tables(config)
    return LesionSynthesiser(
        [_phantom()], target, (32, 32, 32), ["FLAIR", "T1ce"], "tumor", 2.0,
        SynthesisParameters(translation_vox=2.0),
        LesionParameters(tumor_probability=1.0, channel_dropout=dropout), seed,
    )  # fmt: skip


def test_lesion_synthesis_is_reproducible_and_targets_match_the_labels():
    first, again, other = (
        _synthesiser(5).sample(),
        _synthesiser(5).sample(),
        _synthesiser(6).sample(),
    )
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
    images, target = first
    assert images.shape == (2, 32, 32, 32) and set(target.unique().tolist()) <= {0, 1, 2, 3}
    assert (target > 0).any()
    assert float(images.abs().max()) <= 5  # z-scores inside the brain, clipped
    assert (images[:, target > 0] != 0).float().mean() > 0.9  # lesions are inside the mask


def test_channel_dropout_leaves_missing_contrasts_as_zeros():
    synthesiser = _synthesiser(1, dropout=(0.0, 1.0))
    for _ in range(3):
        images, _ = synthesiser.sample()
        assert images[0].any() and not images[1].any()


class _Constant(Sampler):
    def __init__(self, value: float) -> None:
        self.value = value
        self.generator = torch.Generator()

    def sample(self):
        return torch.full((1, 2, 2, 2), self.value), torch.zeros((2, 2, 2), dtype=torch.long)


def test_mixed_sampler_draws_from_each_source_in_proportion():
    only_first = MixedSampler([_Constant(1.0), _Constant(2.0)], [1.0, 0.0], seed=0)
    assert {float(only_first.sample()[0].max()) for _ in range(20)} == {1.0}
    mixed = MixedSampler([_Constant(1.0), _Constant(2.0)], [0.25, 0.75], seed=0)
    draws = [float(mixed.sample()[0].max()) for _ in range(400)]
    assert 0.65 < draws.count(2.0) / len(draws) < 0.85
    assert all(s.generator is mixed.generator for s in mixed.samplers)  # one checkpointed state
    images, _ = mixed.batch(12)
    assert mixed.batch_sources == [int(v) - 1 for v in images.amax((1, 2, 3, 4)).tolist()]
    with pytest.raises(ValueError, match="non-negative weight"):
        MixedSampler([_Constant(1.0)], [0.5, 0.5])


def _real_tumour_case(folder, label: str) -> None:
    """A BraTS-like case: FLAIR, contrast T1w, BraTS labels (4 enhancing, 3 non-enhancing)
    and a brain mask, 2 mm."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    brain = np.zeros((30, 30, 30), np.uint8)
    brain[3:-3, 3:-3, 3:-3] = 1
    truth = np.zeros_like(brain)
    truth[10:20, 10:20, 10:20] = 2
    truth[13:17, 13:17, 13:17] = 4
    truth[14:16, 14:16, 14:16] = 3
    flair = (brain + (truth == 2)).astype(np.float32)
    anat = folder / f"sub-{label}" / "anat"
    derived = folder / "derivatives" / "labels" / f"sub-{label}" / "anat"
    for path, data in (
        (anat / f"sub-{label}_FLAIR.nii.gz", flair),
        (anat / f"sub-{label}_ce-gadolinium_T1w.nii.gz", brain + 2.0 * (truth == 4)),
        (derived / f"sub-{label}_desc-tumor_dseg.nii.gz", truth),
        (derived / f"sub-{label}_desc-brain_mask.nii.gz", brain),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        nb.save(nb.Nifti1Image(data, affine), path)


def _fine_tuning_config(tmp_path) -> TrainConfig:
    """A real BraTS-like case with half of the samples simulated in one label map."""
    _real_tumour_case(tmp_path / "bids", "pat01")
    (tmp_path / "maps").mkdir()
    nb.save(nb.Nifti1Image(_phantom().numpy().astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0])),
            tmp_path / "maps" / "training_seg_01.nii.gz")  # fmt: skip
    return TrainConfig(
        name="t", task="tumor", source="bids", bids_dir=str(tmp_path / "bids"),
        labels_dir=str(tmp_path / "bids" / "derivatives" / "labels"),
        train_subjects=["pat01"], validation_subjects=["pat01"], test_subjects=[],
        voxel_size_mm=2.0, sample_shape=(16, 16, 16), channels=["FLAIR", "T1ce"],
        brain_crop_margin=1, synthetic_share=0.5, label_maps=str(tmp_path / "maps"),
        synthetic_subjects=["01"], lesions={"tumor_probability": 1.0},
        synthesis={"translation_vox": 0.0},
    )  # fmt: skip


def test_fine_tuning_mixes_simulated_tumours_into_real_cases(tmp_path):
    """Each source keeps its own label coding: BraTS values for the real case, the
    simulator's lesion values for the synthetic maps (whose 2, 3 and 4 are tissues)."""
    config = _fine_tuning_config(tmp_path)
    generation, target, _ = lookup_tables(config)
    training, validation, _ = make_samplers(config, target, generation)
    real, synthetic = training.samplers
    assert isinstance(real, PairedAugmenter) and isinstance(validation, PairedAugmenter)
    assert isinstance(synthetic, LesionSynthesiser)
    assert real.target_lut[[2, 3, 4]].tolist() == [2, 1, 3]
    assert synthetic.target_lut[[2, 3, 4]].tolist() == [0, 0, 0]
    assert synthetic.target_lut[LESION_VALUES["enhancing"]] == 3
    images, targets = training.batch(6)
    assert images.shape == (6, 2, 16, 16, 16) and int(targets.max()) <= 3
    again, _ = make_samplers(config, target, generation)[0].batch(6)
    assert torch.equal(images, again)
    with pytest.raises(ValueError, match="synthetic_share"):
        make_samplers(TrainConfig(**{**config.__dict__, "source": "synthetic",
                                     "train_subjects": ["01"], "validation_subjects": ["01"]}),
                      target, generation)  # fmt: skip
    with pytest.raises(ValueError, match=r"a share in \(0, 1\]"):
        make_samplers(TrainConfig(**{**config.__dict__, "synthetic_share": 1.5}), target,
                      generation)  # fmt: skip


def test_tumour_training_with_brats_region_decoding_writes_it_into_the_card(tmp_path):
    _real_tumour_case(tmp_path / "bids", "pat01")
    config = TrainConfig(
        name="t", task="tumor", source="bids", bids_dir=str(tmp_path / "bids"),
        labels_dir=str(tmp_path / "bids" / "derivatives" / "labels"),
        train_subjects=["pat01"], validation_subjects=["pat01"], test_subjects=[],
        voxel_size_mm=2.0, sample_shape=(16, 16, 16), channels=["FLAIR", "T1ce"],
        brain_crop_margin=1, features=(2, 4), iterations=2, validation_every=2,
        validation_samples=1, brats_region_decoding=True,
    )  # fmt: skip
    card, _ = load_bundle(train(config, tmp_path / "run"))
    assert card.inputs["nested_regions"] == [[1, 2, 4], [1, 4], [4]]
    plain = dataclasses.replace(config, brats_region_decoding=False)
    assert "nested_regions" not in load_bundle(train(plain, tmp_path / "plain"))[0].inputs


def test_fine_tuning_can_score_real_cases_on_the_whole_tumour_only(tmp_path):
    config = dataclasses.replace(
        _fine_tuning_config(tmp_path), features=(2, 4), iterations=2, validation_every=2,
        validation_samples=1, real_whole_tumor_only=True,
    )  # fmt: skip
    card, _ = load_bundle(train(config, tmp_path / "run"))
    assert card.training["config"]["real_whole_tumor_only"] is True
    assert "whole tumour only" in card.training["data"]
    with pytest.raises(ValueError, match="simulated samples"):
        train(dataclasses.replace(config, synthetic_share=0.0), tmp_path / "refused")


def test_whole_tumour_loss_ignores_how_the_tumour_divides():
    target = torch.zeros(2, 2, 2, 2, dtype=torch.long)
    target[:, 0] = 1  # four core voxels in each sample
    logits = torch.full((2, 4, 2, 2, 2), -50.0)
    logits[:, 0][target == 0] = 50
    logits[:, 3][target == 1] = 50  # called enhancing: right whole tumour, wrong classes
    tumor_classes = [1, 2, 3]
    assert whole_tumor_loss(logits, target, tumor_classes).item() == pytest.approx(0, abs=1e-3)
    full = batch_loss(logits, target)
    assert full.item() > 10  # cross-entropy of confidently wrong classes
    missed = logits.flip(1)  # tumour called background and background enhancing
    assert whole_tumor_loss(missed, target, tumor_classes).item() > 10
    only_first = torch.tensor([True, False])
    mixed = batch_loss(logits, target, only_first, tumor_classes)
    second = batch_loss(logits[1:], target[1:])
    assert mixed.item() == pytest.approx(0.5 * second.item(), rel=1e-3)


def test_region_and_lesion_metrics_against_hand_computed_values():
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[2:8, 2:8, 2:8] = 2  # edema 216 voxels
    reference[4:6, 4:6, 4:6] = 4  # enhancing 8
    prediction = reference.copy()
    prediction[4:6, 4:6, 4:6] = 1  # core found, enhancement missed
    rows = {r["name"]: r for r in region_metrics(prediction, reference, TUMOR_REGIONS, (1, 1, 1))}
    assert rows["whole_tumor"]["dice"] == 1.0
    assert rows["tumor_core"]["dice"] == 1.0
    assert rows["enhancing_tumor"]["dice"] == 0.0
    assert rows["enhancing_tumor"]["volume_difference_mm3"] == -8.0

    lesions = np.zeros((20, 20, 20), bool)
    lesions[1:3, 1:3, 1:3] = True  # lesion A, 8 voxels
    lesions[10:12, 10:12, 10:12] = True  # lesion B
    lesions[15, 15, 15] = True  # lesion C
    found = np.zeros_like(lesions)
    found[2, 2, 2] = True  # touches A
    found[11:14, 11:14, 11:14] = True  # touches B (and spills over)
    found[5, 17, 5] = True  # a false positive
    scores = lesion_detection(found, lesions)
    assert scores["reference_lesions"] == 3 and scores["predicted_lesions"] == 3
    assert scores["lesion_recall"] == pytest.approx(2 / 3)
    assert scores["lesion_precision"] == pytest.approx(2 / 3)
    assert scores["lesion_f1"] == pytest.approx(2 / 3)
    diagonal = np.zeros_like(lesions)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # corners touch: one lesion (26-connectivity)
    assert lesion_detection(diagonal, diagonal)["reference_lesions"] == 1
    assert lesion_detection(np.zeros_like(lesions), np.zeros_like(lesions))["lesion_f1"] == 1.0
    assert absolute_volume_difference_percent(found, lesions) == pytest.approx(
        100 * abs(1 + 27 + 1 - 17) / 17
    )


def test_a_region_missed_in_one_case_is_counted_not_hidden_in_the_hd95_mean():
    from bids_dl.models.evaluate import summarise

    card = ModelCard(name="m", version="0", task="tumor", architecture={}, inputs={},
                     outputs={"labels": {"0": "background", "4": "enhancing"}})  # fmt: skip
    rows = [
        {"case": "a", "name": "enhancing_tumor", "dice": 0.8, "hd95_mm": 4.0,
         "volume_difference_mm3": 10.0},
        {"case": "b", "name": "enhancing_tumor", "dice": 0.0, "hd95_mm": float("nan"),
         "volume_difference_mm3": -50.0},
    ]  # fmt: skip
    summary = summarise(rows, card)["labels"]["enhancing_tumor"]
    assert summary["hd95_mm_mean"] == 4.0 and summary["hd95_mm_undefined"] == 1
    assert (
        summary["dice_mean"] == pytest.approx(0.4)
        and summary["volume_difference_mm3_undefined"] == 0
    )


def _subject(label: str, **files) -> SubjectInputs:
    return SubjectInputs(label=label, files={"t1w": ["t1w.nii.gz"]} | {
        kind: [path] for kind, path in files.items()
    })  # fmt: skip


def test_analyses_run_where_their_inputs_exist_unless_named():
    bundles = {"tumor": "tumor_bundle", "wmh": "wmh_bundle"}
    subjects = {
        "01": _subject("01"),
        "02": _subject("02", flair="flair.nii.gz", t1ce="ce.nii.gz"),
        "03": _subject("03", flair="flair.nii.gz"),
    }
    plan_analyses(subjects, ["anat", "tumor", "wmh"], False, bundles)
    assert [s.analyses for s in subjects.values()] == [
        ["anat"],
        ["anat", "tumor"],
        ["anat", "wmh"],  # no WMH on a tumour: edema is not WMH
    ]
    plan_analyses(subjects, ["anat", "tumor", "wmh"], False, {"tumor": None, "wmh": None})
    assert all(s.analyses == ["anat"] for s in subjects.values())
    with pytest.raises(InputError, match="sub-01: --analyses wmh needs a FLAIR image"):
        plan_analyses(subjects, ["anat", "wmh"], True, bundles)
    with pytest.raises(InputError, match="no tumor model is installed"):
        plan_analyses(subjects, ["tumor"], True, {"tumor": None})
    named = {"03": subjects["03"]}
    plan_analyses(named, ["anat", "tumor", "wmh"], True, bundles)
    assert named["03"].analyses == ["anat", "tumor", "wmh"]  # named: FLAIR alone is enough


def _lesion_bundle(folder, task: str, contrasts: list[str]):
    labels = (
        {"0": "background", "1": "core", "2": "edema", "4": "enhancing"}
        if task == "tumor"
        else {"0": "background", "1": "white-matter hyperintensity"}
    )
    card = ModelCard(
        name=f"untrained-{task}", version="0", task=task,
        architecture={"name": "UNet3D", "args": {"in_channels": len(contrasts),
                      "out_channels": len(labels), "features": [2, 4]}},
        inputs={"voxel_size_mm": 3.0, "window": [16, 16, 16], "brain_crop_margin_mm": 6.0,
                "contrasts": contrasts, "needs_brain_mask": True},
        outputs={"labels": labels},
    )  # fmt: skip
    torch.manual_seed(0)
    return save_bundle(folder, card, UNet3D(len(contrasts), len(labels), features=(2, 4)))


def test_missing_contrasts_are_fed_as_zeros_and_essential_ones_are_checked(tmp_path):
    from bids_dl.workflows.interfaces.deep_learning import model_lesions

    bundle = _lesion_bundle(tmp_path / "tumor", "tumor", ["FLAIR", "T1ce", "T1w", "T2w"])
    shape, affine = (20, 22, 18), np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("t1w", "flair", "mask"):
        data = rng.random(shape).astype(np.float32) if name != "mask" else np.ones(shape, np.uint8)
        paths[name] = tmp_path / f"{name}.nii.gz"
        nb.save(nb.Nifti1Image(data, affine), paths[name])
    out = tmp_path / "tumor.nii.gz"
    measures, model = model_lesions(
        "tumor", str(bundle), str(paths["t1w"]), str(paths["mask"]), str(out),
        {"FLAIR": str(paths["flair"]), "T1ce": None, "T2w": None}, device="cpu",
    )  # fmt: skip
    labels = nb.load(out)
    assert labels.shape == shape and np.allclose(labels.affine, affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 4}
    assert set(measures) == {"whole_tumor_mm3", "tumor_core_mm3", "enhancing_tumor_mm3",
                             "edema_mm3"} and model["Name"] == "untrained-tumor"  # fmt: skip
    with pytest.raises(ValueError, match="needs a FLAIR or T1ce image"):
        model_lesions(
            "tumor", str(bundle), str(paths["t1w"]), str(paths["mask"]), str(out),
            {"FLAIR": None, "T1ce": None, "T2w": None}, device="cpu",
        )  # fmt: skip
    # a session whose only T1-weighted image is contrast-enhanced: it fills the T1ce channel
    measures, _ = model_lesions(
        "tumor", str(bundle), str(paths["t1w"]), str(paths["mask"]), str(out),
        {"FLAIR": None, "T1ce": None, "T2w": None}, device="cpu", reference_contrast="T1ce",
    )  # fmt: skip
    assert "whole_tumor_mm3" in measures
    channels = [nb.load(paths["flair"]), None, nb.load(paths["t1w"])]  # T2w left out
    with pytest.raises(ValueError, match=r"takes 4 image\(s\) \(FLAIR, T1ce, T1w, T2w\), got 3"):
        segment(channels, *load_bundle(bundle), mask=np.ones(shape, bool))


def test_a_contrast_covering_little_of_the_brain_is_measured_and_warned_about(
    tmp_path, caplog, monkeypatch
):
    """A FLAIR slab over a third of the brain (or a misregistered one) is still used where it
    was acquired, and the user hears of it."""
    from bids_dl.workflows.interfaces.deep_learning import model_lesions

    bundle = _lesion_bundle(tmp_path / "wmh", "wmh", ["FLAIR", "T1w"])
    shape, affine = (20, 22, 18), np.diag([2.0, 2.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    coverage = np.zeros(shape, np.uint8)
    coverage[:, :, :6] = 1  # 6 of 18 slices
    paths = {}
    for name, data in (("t1w", rng.random(shape)), ("flair", rng.random(shape)),
                       ("mask", np.ones(shape)), ("coverage", coverage)):  # fmt: skip
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nb.save(nb.Nifti1Image(data.astype(np.float32), affine), paths[name])
    # a CLI run earlier in the test run stops bids_dl's records at its own handler
    monkeypatch.setattr(logging.getLogger("bids_dl"), "propagate", True)
    with caplog.at_level("WARNING", logger="bids_dl.lesions"):
        measures, _ = model_lesions(
            "wmh", str(bundle), paths["t1w"], paths["mask"], str(tmp_path / "wmh.nii.gz"),
            {"FLAIR": paths["flair"], "T1ce": None, "T2w": None}, device="cpu",
            coverages={"FLAIR": paths["coverage"]},
        )  # fmt: skip
    assert measures["flair_brain_coverage"] == pytest.approx(6 / 18, abs=1e-3)
    assert "the FLAIR covers 33% of the brain" in caplog.text


def test_a_registered_contrast_comes_with_the_field_of_view_it_covers(tmp_path, monkeypatch):
    """A FLAIR slab that stops short of the top of the head: the coverage mask says where."""
    from bids_dl.workflows.interfaces.ants import coregister_rigid

    monkeypatch.setenv("ANTS_RANDOM_SEED", "7")  # ANTs samples the metric at random otherwise
    grid = np.indices((40, 40, 40)) - 19.5
    radius = np.sqrt((grid[0] / 1.0) ** 2 + (grid[1] / 1.2) ** 2 + (grid[2] / 0.9) ** 2)
    head = np.where(radius < 16, 1.0, 0.0) + np.where(radius < 8, 1.5, 0.0)  # a two-tissue ball
    head[24:30, 10:16, 8:14] += 2.0  # and something off-centre, for the registration to hold on to
    head = ndimage.gaussian_filter(head, 1.0).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nb.save(nb.Nifti1Image(head, affine), tmp_path / "t1w.nii.gz")
    nb.save(nb.Nifti1Image(head[:, :, :28] ** 2, affine), tmp_path / "flair.nii.gz")  # 28 slices
    out, coverage = coregister_rigid(
        str(tmp_path / "flair.nii.gz"), str(tmp_path / "t1w.nii.gz"),
        str(tmp_path / "out.nii.gz"), str(tmp_path / "coverage.nii.gz"),
    )  # fmt: skip
    covered = np.asarray(nb.load(coverage).dataobj) > 0
    assert nb.load(out).shape == covered.shape == head.shape
    # the bulk only: a voxel more or less at the cut depends on the seed
    assert covered[8:-8, 8:-8, 4:22].all() and not covered[:, :, 31:].any()
    assert 0.6 < covered.mean() < 28 / 40 + 0.02


def test_a_contrast_is_normalised_inside_its_coverage_and_missing_outside(tmp_path, monkeypatch):
    import bids_dl.models.inference as inference

    bundle = _lesion_bundle(tmp_path / "wmh", "wmh", ["FLAIR", "T1w"])
    shape, affine = (16, 16, 16), np.diag([3.0, 3.0, 3.0, 1.0])  # the bundle's grid
    flair = np.random.default_rng(0).normal(10.0, 2.0, shape).astype(np.float32)
    covered = np.zeros(shape, bool)
    covered[:, :, :10] = True
    flair[~covered] = 0  # what the registration leaves outside the slab
    seen = []

    def record(network, volumes, n_classes, *args, **kwargs):
        seen.append(volumes[0].numpy())
        return torch.full((n_classes, *volumes.shape[1:]), 1 / n_classes)

    monkeypatch.setattr(inference, "predict_probabilities", record)
    image, brain = nb.Nifti1Image(flair, affine), np.ones(shape, bool)
    card, network = load_bundle(bundle)
    for coverage in (None, [covered, None]):
        segment([image, None], card, network, mask=brain, coverage=coverage)
    zero_filled, with_coverage = seen
    inside = with_coverage != 0  # the covered brain on the model grid
    assert 0.4 < inside.sum() / (zero_filled != 0).sum() < 0.8  # 10 of 16 slices, edges left out
    assert abs(with_coverage[inside].mean()) < 1e-3 and abs(with_coverage[inside].std() - 1) < 1e-2
    assert zero_filled[inside].mean() > 0.5  # the zeros pulled the mean down: tissue looked bright


@pytest.fixture(scope="module")
def lesion_run(smoke_run) -> dict:
    """The smoke run's tumour (02), WMH (03) and BraTS-style (04) subjects, segmented by the
    shipped lesion models, with what their cards say of them."""
    cards = {task: load_card(shipped_bundles()[task]) for task in ("tumor", "wmh")}
    names = {task: card.name for task, card in cards.items()}
    versions = {task: card.version for task, card in cards.items()}
    members = {task: card.architecture["args"].get("members") for task, card in cards.items()}
    return {**smoke_run, "names": names, "versions": versions, "members": members}


@pytest.mark.slow
def test_lesion_workflow_writes_labels_measures_and_figures(lesion_run):
    from tests.test_smoke import _validator_errors

    assert lesion_run["participant"].returncode == 0, lesion_run["participant"].stderr[-3000:]
    assert lesion_run["group"].returncode == 0, lesion_run["group"].stderr[-3000:]
    output = lesion_run["output"]
    for subject, name, task in (("02", "desc-tumor_dseg", "tumor"), ("03", "desc-wmh_mask", "wmh")):
        anat = output / f"sub-{subject}" / "anat"
        labels = nb.load(anat / f"sub-{subject}_{name}.nii.gz")
        preproc = nb.load(anat / f"sub-{subject}_desc-preproc_T1w.nii.gz")
        assert labels.shape == preproc.shape and np.allclose(labels.affine, preproc.affine)
        sidecar = json.loads((anat / f"sub-{subject}_{name}.json").read_text())
        assert sidecar["DeepLearningModel"]["Name"] == lesion_run["names"][task]
        assert any("FLAIR" in source for source in sidecar["Sources"])
        assert (
            output / f"sub-{subject}" / "figures" / f"sub-{subject}_desc-{task}_FLAIR.png"
        ).is_file()
    assert not (output / "sub-02" / "anat" / "sub-02_desc-wmh_mask.nii.gz").exists()
    assert (output / "sub-02" / "figures" / "sub-02_desc-tumor_T1w.png").is_file()
    lookup = pd.read_csv(output / "desc-tumor_dseg.tsv", sep="\t")
    assert list(lookup["index"]) == [1, 2, 4]
    table = pd.read_csv(output / "phenotype" / "anatomical.tsv", sep="\t")
    assert {"whole_tumor_mm3", "enhancing_tumor_mm3", "wmh_count", "wmh_mm3"} <= set(table.columns)
    coverage = table.set_index("participant_id")["flair_brain_coverage"]  # whole-head FLAIRs
    assert coverage.loc[["sub-02", "sub-03", "sub-04"]].between(0.95, 1.0).all()
    report = (output / "sub-02.html").read_text()
    assert "sub-02_desc-tumor_FLAIR.png" in report and "Tumour segmentation" in report

    # each registered contrast gets a coregistration figure, named after its raw file; a
    # BraTS-style session's ce-T1w is the reference, so only its FLAIR is registered
    def coregistration_figures(subject: str) -> list[str]:
        return sorted(p.name for p in (output / f"sub-{subject}" / "figures").glob("*desc-coreg*"))

    figures = ["sub-02_ce-gadolinium_desc-coreg_T1w.png", "sub-02_desc-coreg_FLAIR.png",
               "sub-02_desc-coreg_T2w.png"]  # fmt: skip
    assert coregistration_figures("02") == figures
    assert all(figure in report for figure in figures) and "Coregistration" in report
    assert coregistration_figures("04") == [f"sub-04_desc-coreg_{s}.png" for s in ("FLAIR", "T2w")]
    # the methods name the model that ran, and its kind, as its card does
    members = lesion_run["members"]["tumor"]
    network = f"an ensemble of 3D U-Nets ({members}, " if members else "a 3D U-Net"
    assert f"{lesion_run['names']['tumor']} {lesion_run['versions']['tumor']}, {network}" in report
    assert _validator_errors(output) == []


@pytest.mark.slow
@pytest.mark.skipif(
    not {"tumor", "wmh"} <= set(shipped_bundles()), reason="no lesion models in bids_dl/models/zoo"
)
def test_the_shipped_lesion_models_find_the_simulated_lesions(lesion_run):
    """Floors under what the shipped models scored on these 2 mm sample subjects (seed 3):
    tumour Dice 0.93, WMH Dice 0.89. The truth is on the raw grid; outputs on its RAS+ twin."""
    from bids_dl.models.metrics import dice

    output, truth_dir = lesion_run["output"], lesion_run["bids"] / "derivatives" / "sample-truth"
    for subject, name, floor in (("02", "desc-tumor_dseg", 0.8), ("03", "desc-wmh_mask", 0.7)):
        found = nb.load(output / f"sub-{subject}" / "anat" / f"sub-{subject}_{name}.nii.gz")
        truth = nb.as_closest_canonical(
            nb.load(truth_dir / f"sub-{subject}" / "anat" / f"sub-{subject}_{name}.nii.gz")
        )
        assert np.allclose(found.affine, truth.affine, atol=1e-3)
        score = dice(np.asarray(found.dataobj) > 0, np.asarray(truth.dataobj) > 0)
        assert score >= floor, (name, score)


@pytest.mark.slow
@pytest.mark.skipif("tumor" not in shipped_bundles(), reason="no tumour model in models/zoo")
def test_a_brats_style_session_is_segmented_from_its_skull_stripped_ce_t1w(lesion_run):
    """sub-04 is sub-02 without its T1w, skull-stripped and z-scored as BraTS cases are:
    everything is derived from the ce-T1w (names keep its ``ce-`` entity), its brain mask is
    its non-background voxels (Dice 1.000 with the true brain when written), and the tumour is
    found (whole tumour / core / enhancing 0.838 / 0.959 / 0.959 when written)."""
    from bids_dl.models.metrics import dice

    anat = lesion_run["output"] / "sub-04" / "anat"
    truth_brain = nb.as_closest_canonical(
        nb.load(lesion_run["bids"] / "derivatives" / "sample-truth" / "sub-02" / "anat"
                / "sub-02_desc-brain_mask.nii.gz")
    )  # fmt: skip
    brain = nb.load(anat / "sub-04_ce-gadolinium_desc-brain_mask.nii.gz")
    assert dice(np.asarray(brain.dataobj) > 0, np.asarray(truth_brain.dataobj) > 0) > 0.99
    found = nb.load(anat / "sub-04_ce-gadolinium_desc-tumor_dseg.nii.gz")
    assert (anat / "sub-04_ce-gadolinium_desc-preproc_T1w.nii.gz").is_file()
    truth_dir = lesion_run["bids"] / "derivatives" / "sample-truth" / "sub-02" / "anat"
    truth = nb.as_closest_canonical(nb.load(truth_dir / "sub-02_desc-tumor_dseg.nii.gz"))
    assert np.allclose(found.affine, truth.affine, atol=1e-3)
    assert dice(np.asarray(found.dataobj) > 0, np.asarray(truth.dataobj) > 0) >= 0.75
    sidecar = json.loads((anat / "sub-04_ce-gadolinium_desc-tumor_dseg.json").read_text())
    assert not any(source.endswith("sub-04_T1w.nii.gz") for source in sidecar["Sources"])
    report = (lesion_run["output"] / "sub-04.html").read_text()
    assert "the participant has no T1w without contrast" in report
    assert "already skull-stripped" in report
    measures = pd.read_csv(anat / "sub-04_ce-gadolinium_desc-anat_measures.tsv", sep="\t")
    tissues = measures[["gm_mm3", "wm_mm3", "template_dice_gm"]]
    if "structures" in shipped_bundles():  # the structures model reads any contrast
        assert tissues.gt(0).all(axis=None)
    else:  # Atropos's intensity classes of a contrast-enhanced T1w are not tissues
        assert tissues.isna().all(axis=None)
    assert measures["brain_mask_mm3"].notna().all() and measures["whole_tumor_mm3"].gt(0).all()


def test_postprocessing_keeps_the_largest_tumour_or_drops_small_lesions():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[1, 1, 1] = 1  # 1 voxel
    labels[5:7, 5:7, 5] = 1  # 4 voxels
    labels[10:14, 10:14, 10:14] = 2  # 64 voxels, another label value
    labels[12, 12, 12] = 4

    assert np.count_nonzero(remove_small_components(labels, 5)) == 64
    assert remove_small_components(labels, 5)[12, 12, 12] == 4  # values are kept

    def card(**inputs) -> ModelCard:
        return ModelCard("m", "1", "wmh", {}, inputs, {"labels": {"1": "lesion"}})

    assert np.count_nonzero(postprocess(labels, card())) == 69  # nothing asked
    assert np.count_nonzero(postprocess(labels, card(postprocessing="largest_component"))) == 64
    # 8 mm^3 with 2 mm^3 voxels: components under 4 voxels go
    assert np.count_nonzero(postprocess(labels, card(min_lesion_mm3=8), voxel_mm3=2.0)) == 68
    with pytest.raises(ValueError, match="unknown post-processing"):
        postprocess(labels, card(postprocessing="bogus"))


def test_most_confident_component_beats_a_larger_but_less_certain_one():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:14, 2:14, 2:14] = 2  # 1728 voxels: a large false component
    labels[20:28, 20:28, 20:28] = 1  # 512 voxels: the tumour
    labels[17, 2, 2] = 4  # one very confident voxel
    background = np.ones(labels.shape, np.float32)
    background[labels > 0] = 0.3  # foreground probability 0.7 ...
    background[20:28, 20:28, 20:28] = 0.1  # ... 0.9 in the tumour
    background[17, 2, 2] = 0.0  # ... and 1.0 in the single voxel
    probabilities = np.stack([background, 1 - background])

    def card(step: str) -> ModelCard:
        return ModelCard("m", "1", "tumor", {}, {"postprocessing": step}, {"labels": {}})

    largest = postprocess(labels, card("largest_component"), 1.0, probabilities)
    assert np.count_nonzero(largest) == 1728
    # 2 mm^3 voxels: the tumour (1024 mm^3) is eligible, the single voxel (2 mm^3) is not
    kept = postprocess(labels, card("most_confident_component"), 2.0, probabilities)
    assert np.count_nonzero(kept) == 512 and kept[24, 24, 24] == 1
    # 1 mm^3 voxels: only the false component reaches 1000 mm^3
    kept = postprocess(labels, card("most_confident_component"), 1.0, probabilities)
    assert np.count_nonzero(kept) == 1728
    # nothing reaches the floor: the most confident of all, the single voxel, is kept
    kept = postprocess(labels, card("most_confident_component"), 0.1, probabilities)
    assert np.count_nonzero(kept) == 1 and kept[17, 2, 2] == 4
    with pytest.raises(ValueError, match="needs the model's probabilities"):
        postprocess(labels, card("most_confident_component"))


def test_nested_region_decoding_against_hand_worked_voxels():
    # classes: background, core (necrosis), edema, enhancing; regions WT > TC > ET
    regions = [[1, 2, 3], [1, 3], [3]]
    voxels = np.array([
        [0.60, 0.10, 0.20, 0.10],  # tumour 0.40: background
        [0.40, 0.35, 0.25, 0.00],  # tumour 0.60, core 0.35: edema, though argmax is background
        [0.30, 0.20, 0.20, 0.30],  # tumour 0.70, core 0.50 (not > 0.5): edema
        [0.10, 0.35, 0.30, 0.25],  # core 0.60, enhancing 0.25: core (necrosis)
        [0.00, 0.30, 0.00, 0.70],  # enhancing 0.70: enhancing
    ], dtype=np.float32).T.reshape(4, 5, 1, 1)  # fmt: skip
    assert decode_nested_regions(voxels, regions).ravel().tolist() == [0, 2, 2, 1, 3]
    assert voxels.argmax(0).ravel().tolist() == [0, 0, 0, 1, 3]
    # lower whole-tumour and core thresholds: the first voxel is edema, the third core
    lowered = decode_nested_regions(voxels, regions, thresholds=(0.35, 0.45, 0.5))
    assert lowered.ravel().tolist() == [2, 2, 1, 1, 3]


def test_brats_regions_as_class_indices_and_the_class_dice_loss():
    config = TrainConfig(name="t", task="tumor", train_subjects=[], validation_subjects=[],
                         test_subjects=[])  # fmt: skip
    _, _, names = lookup_tables(config)
    assert brats_region_classes(config, names) == [[1, 2, 3], [1, 3], [3]]
    with pytest.raises(ValueError, match="tumor task"):
        brats_region_classes(dataclasses.replace(config, task="wmh"), names)
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    target[0, 0] = 1  # four core voxels
    logits = torch.full((1, 4, 2, 2, 2), -50.0)
    logits[0, 0][target[0] == 0] = 50
    logits[0, 3][target[0] == 1] = 50  # all called enhancing
    # Dice of the classes: core 0, edema 1 (absent from both, smoothed), enhancing 0
    assert soft_dice_loss(logits, target).item() == pytest.approx(2 / 3, abs=1e-3)
