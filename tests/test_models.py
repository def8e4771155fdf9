"""The deep-learning engine: networks, bundles, synthesis and inference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
import torch

from bids_dl.models.bundle import load_bundle, save_bundle
from bids_dl.models.card import BundleError, ModelCard, weights_sha256
from bids_dl.models.inference import segment, to_native
from bids_dl.models.losses import soft_dice_loss
from bids_dl.models.metrics import dice
from bids_dl.models.networks import UNet3D
from bids_dl.models.sliding_window import predict_probabilities
from bids_dl.models.synthesis import (
    LabelSynthesiser,
    SynthesisParameters,
    deform_labels,
    synthesise_test_image,
)
from bids_dl.models.transforms import normalise_intensities

ARCHITECTURE = {"name": "UNet3D", "args": {"in_channels": 1, "out_channels": 2, "features": [2, 4]}}


def _card(**changes) -> ModelCard:
    fields = dict(
        name="tiny",
        version="0",
        task="brain_mask",
        architecture=ARCHITECTURE,
        inputs={"voxel_size_mm": 2.0, "window": None},
        outputs={"labels": {"0": "bg", "1": "fg"}},
    )
    fields.update(changes)
    return ModelCard(**fields)


def test_unet_keeps_the_spatial_size_and_checks_it():
    network = UNet3D(1, 3, features=(2, 4, 8), residual=True)
    assert network(torch.zeros(1, 1, 8, 12, 16)).shape == (1, 3, 8, 12, 16)
    with pytest.raises(ValueError, match="divisible"):
        network(torch.zeros(1, 1, 6, 8, 8))


def test_bundle_round_trip(tmp_path):
    network = UNet3D(1, 2, features=(2, 4))
    save_bundle(tmp_path / "b", _card(), network)
    card, loaded = load_bundle(tmp_path / "b")
    assert card.labels == {0: "bg", 1: "fg"}
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_the_bundle_list_shows_the_headline_or_else_the_plain_metrics(tmp_path):
    from dataclasses import replace

    from bids_dl.models.registry import describe

    network = UNet3D(1, 2, features=(2, 4))
    save_bundle(
        tmp_path / "plain", replace(_card(), metrics={"dice": 0.5, "test": {"x": 1}}), network
    )
    assert describe(tmp_path / "plain").endswith("dice=0.5")
    metrics = {"headline": "REAL test Dice 0.8", "dice": 0.5}
    save_bundle(tmp_path / "headline", replace(_card(), metrics=metrics), network)
    assert describe(tmp_path / "headline").endswith("REAL test Dice 0.8")


def test_bundle_refuses_a_pickle(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    torch.save(UNet3D(1, 2, features=(2, 4)).state_dict(), folder / "weights.pt")
    (folder / "model.json").write_text(json.dumps({"card_version": 1}))
    with pytest.raises(BundleError, match="pickled weights are refused"):
        load_bundle(folder)


def test_bundle_refuses_a_card_that_does_not_match(tmp_path):
    save_bundle(tmp_path / "b", _card(), UNet3D(1, 2, features=(2, 4)))
    card = json.loads((tmp_path / "b" / "model.json").read_text())
    card["architecture"]["args"]["features"] = [4, 8]
    (tmp_path / "b" / "model.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="do not match"):
        load_bundle(tmp_path / "b")
    card["architecture"]["args"]["features"] = [2, 4]
    card["outputs"]["labels"]["2"] = "extra"
    (tmp_path / "b" / "model.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="2 output channels but the card names 3"):
        load_bundle(tmp_path / "b")
    card["card_version"] = 99
    (tmp_path / "b" / "model.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="card version 99"):
        load_bundle(tmp_path / "b")


def test_bundle_refuses_unknown_mirror_axes(tmp_path):
    save_bundle(tmp_path / "b", _card(), UNet3D(1, 2, features=(2, 4)))
    card = json.loads((tmp_path / "b" / "model.json").read_text())
    card["inputs"]["test_time_mirror_axes"] = [0, 3]
    (tmp_path / "b" / "model.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="test_time_mirror_axes"):
        load_bundle(tmp_path / "b")


def test_mirroring_averages_the_mirrored_predictions():
    """Mirror test-time augmentation: the mean of the plain pass and the pass on the mirrored
    volume mirrored back; windows and whole volumes alike."""
    torch.manual_seed(0)
    network = UNet3D(2, 3, features=(2, 4)).eval()
    volume = torch.randn(2, 24, 16, 16)
    for window in (None, (16, 16, 16)):
        plain = predict_probabilities(network, volume, 3, window)
        mirrored = predict_probabilities(network, volume.flip([1]), 3, window).flip([1])
        averaged = predict_probabilities(network, volume, 3, window, mirror_axes=(0,))
        assert not torch.allclose(plain, mirrored, atol=1e-3)  # the network is not symmetric
        torch.testing.assert_close(averaged, (plain + mirrored) / 2)
        assert torch.allclose(averaged.sum(0), torch.ones(24, 16, 16), atol=1e-5)


def test_cpu_bfloat16_is_used_only_where_the_card_asks_and_the_cpu_has_it(monkeypatch):
    """A card's ``cpu_bfloat16`` runs the network in bfloat16 on a CPU with bfloat16
    instructions: probabilities within rounding of float32; float32 everywhere else."""
    from bids_dl.models import sliding_window

    torch.manual_seed(0)
    network = UNet3D(2, 3, features=(4, 8)).eval()
    volume = torch.randn(2, 16, 16, 16)
    plain = predict_probabilities(network, volume, 3, None)
    monkeypatch.setattr(sliding_window, "cpu_has_native_bfloat16", lambda: True)
    mixed = predict_probabilities(network, volume, 3, None, cpu_bfloat16=True)
    assert not torch.equal(mixed, plain) and torch.allclose(mixed, plain, atol=0.02)
    assert torch.equal(predict_probabilities(network, volume, 3, None), plain)
    monkeypatch.setattr(sliding_window, "cpu_has_native_bfloat16", lambda: False)
    assert torch.equal(predict_probabilities(network, volume, 3, None, cpu_bfloat16=True), plain)


def test_an_ensemble_bundle_averages_its_members_probabilities(tmp_path):
    """``bids_dl-models ensemble``: one bundle whose probabilities are the mean of its
    members'; members that do not match are refused with the reason."""
    from click.testing import CliRunner

    from bids_dl.models_cli import models_main

    torch.manual_seed(0)
    members = [UNet3D(1, 2, features=(2, 4)).eval() for _ in range(3)]
    for index, member in enumerate(members):
        save_bundle(tmp_path / f"m{index}", _card(), member)
    paths = [str(tmp_path / f"m{index}") for index in range(3)]
    result = CliRunner().invoke(
        models_main, ["ensemble", str(tmp_path / "e"), *paths, "--version", "2"]
    )
    assert result.exit_code == 0, result.output
    card, ensemble = load_bundle(tmp_path / "e")
    assert card.version == "2" and card.architecture["args"]["members"] == 3
    assert card.inputs["cpu_bfloat16"] is True
    assert [m["weights_sha256"] for m in card.training["members"]] == [
        weights_sha256(p) for p in paths
    ]
    volume = torch.randn(1, 16, 16, 16)
    stored = [m.half().float() for m in members]  # the ensemble stores float16 weights
    expected = torch.stack([predict_probabilities(m, volume, 2, None) for m in stored]).mean(0)
    torch.testing.assert_close(predict_probabilities(ensemble, volume, 2, None), expected)

    save_bundle(
        tmp_path / "other", _card(inputs={"voxel_size_mm": 1.0, "window": None}), members[0]
    )
    refused = CliRunner().invoke(
        models_main,
        ["ensemble", str(tmp_path / "bad"), paths[0], str(tmp_path / "other"), "--version", "2"],
    )
    assert refused.exit_code == 2 and "differing inputs: voxel_size_mm" in refused.output
    assert not (tmp_path / "bad").exists()


class ThresholdNet(torch.nn.Module):
    """Label 1 where the normalised intensity exceeds 0.5: a network whose answer is known."""

    divisor = 4

    def forward(self, x):
        return torch.cat([-(x - 0.5), x - 0.5], dim=1) * 20


def _sphere_image(affine: np.ndarray, shape=(40, 36, 14)) -> tuple[nb.Nifti1Image, np.ndarray]:
    ijk = np.indices(shape).reshape(3, -1).T
    world = nb.affines.apply_affine(affine, ijk)
    centre = nb.affines.apply_affine(affine, (np.array(shape) - 1) / 2)
    inside = (np.linalg.norm(world - centre, axis=1) < 18).reshape(shape)
    return nb.Nifti1Image(np.where(inside, 100.0, 10.0).astype(np.float32), affine), inside


@pytest.mark.parametrize("window", [None, [16, 16, 16]])
def test_inference_round_trip_on_an_oblique_anisotropic_image(window):
    angle = np.deg2rad(25)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.1, 1.3, 3.5])  # flipped x, thick slices
    affine[:3, 3] = [10, -30, 5]
    image, inside = _sphere_image(affine)
    card = _card(inputs={"voxel_size_mm": 1.5, "window": window})
    labels, probabilities = segment(image, card, ThresholdNet())
    assert labels.shape == image.shape and probabilities.shape == (2, *image.shape)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-4)
    assert dice(labels == 1, inside) > 0.9


def test_segment_mirrors_when_the_card_asks():
    image, _ = _sphere_image(np.diag([2.0, 2.0, 2.0, 1.0]))
    mirroring = {"voxel_size_mm": 2.0, "window": None, "test_time_mirror_axes": [0]}
    torch.manual_seed(0)
    network = UNet3D(1, 2, features=(2, 4)).eval()
    plain = segment(image, _card(), network)[1]
    mirrored = segment(image, _card(inputs=mirroring), network)[1]
    assert not np.allclose(plain, mirrored, atol=1e-4)
    # a voxel-wise network on a mirror-symmetric image: mirroring changes nothing
    plain = segment(image, _card(), ThresholdNet())[1]
    np.testing.assert_allclose(segment(image, _card(inputs=mirroring), ThresholdNet())[1], plain)


class SplitTumourNet(torch.nn.Module):
    """Inside the bright sphere: background 0.4, two tumour classes 0.27 and 0.33 (so the
    argmax says background, the tumour as a whole 0.6); outside: background."""

    divisor = 4

    def forward(self, x):
        inside = (x > 0.5).float()
        tumour = torch.log(torch.tensor([0.4, 0.27, 0.33])).view(1, 3, 1, 1, 1)
        outside = torch.tensor([10.0, 0.0, 0.0]).view(1, 3, 1, 1, 1)
        return inside * tumour + (1 - inside) * outside


def test_segment_decodes_nested_regions_when_the_card_asks():
    image, inside = _sphere_image(np.diag([2.0, 2.0, 2.0, 1.0]))
    labels = {"outputs": {"labels": {"0": "bg", "1": "a", "2": "b"}}}
    plain = segment(image, _card(**labels), SplitTumourNet())[0]
    assert not plain.any()
    regions = {"voxel_size_mm": 2.0, "window": None, "nested_regions": [[1, 2]]}
    decoded = segment(image, _card(inputs=regions, **labels), SplitTumourNet())[0]
    assert dice(decoded > 0, inside) > 0.95
    assert set(np.unique(decoded[inside])) == {2}
    stricter = {**regions, "nested_region_thresholds": [0.65]}  # the tumour's 0.6 is under it
    assert not segment(image, _card(inputs=stricter, **labels), SplitTumourNet())[0].any()


def _label_maps():
    rng = np.random.default_rng(0)
    maps = []
    for _ in range(2):
        labels = np.zeros((24, 24, 24), np.int64)
        labels[4:20, 4:20, 4:20] = 2
        labels[8:16, 8:16, 8:16] = 3
        labels[rng.random(labels.shape) < 0.01] = 1
        maps.append(torch.from_numpy(labels))
    return maps


def test_synthesis_is_reproducible_from_the_seed():
    generation = torch.tensor([0, 1, 2, 3])
    target = torch.tensor([0, 0, 1, 1])
    a, b, c = (
        LabelSynthesiser(_label_maps(), generation, target, (16, 16, 16), seed=s) for s in (5, 5, 6)
    )
    for _ in range(2):
        (image_a, target_a), (image_b, target_b) = a.sample(), b.sample()
        assert torch.equal(image_a, image_b) and torch.equal(target_a, target_b)
    image_c, _ = c.sample()
    assert not torch.equal(image_a, image_c)
    assert image_a.shape == (1, 16, 16, 16) and image_a.min() >= 0 and image_a.max() <= 1


def test_targets_follow_the_labels():
    generation = torch.tensor([0, 1, 2, 3])
    target = torch.tensor([0, 0, 1, 1])
    maps = _label_maps()
    synthesiser = LabelSynthesiser(maps, generation, target, (24, 24, 24), seed=1)
    synthesiser.params = SynthesisParameters(
        rotation_deg=0, scale=0, shear=0, translation_vox=0, nonlinear_std_vox=0
    )
    _, sampled = synthesiser.sample()
    # with no deformation the target is the lookup of one of the label maps, voxel for voxel
    assert any(torch.equal(sampled, target[labels]) for labels in maps)


def test_mirroring_augmentation_flips_every_axis_when_certain():
    labels = _label_maps()[0]
    labels[2:5, 3:9, 1:4] = 5  # an asymmetric block
    still = dict(rotation_deg=0, scale=0, shear=0, translation_vox=0, nonlinear_std_vox=0)

    def draw(probability: float) -> torch.Tensor:
        params = SynthesisParameters(**still, mirror_probability=probability)
        return deform_labels(labels, (24, 24, 24), params, torch.Generator().manual_seed(3))

    assert torch.equal(draw(0.0), labels)
    assert torch.equal(draw(1.0), labels.flip(0, 1, 2))


def test_dice_against_hand_computed_values():
    a = np.array([0, 1, 1, 1, 0, 0])
    b = np.array([0, 1, 1, 0, 1, 0])
    assert dice(a == 1, b == 1) == pytest.approx(2 * 2 / (3 + 3))
    assert dice(a == 7, b == 7) == 1.0
    perfect = torch.zeros(1, 2, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2, dtype=torch.long)
    target[0, 0] = 1
    perfect[0, 1][target[0] == 1] = 50
    perfect[0, 0][target[0] == 0] = 50
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0, abs=1e-4)


def test_normalisation_clips_and_rescales():
    image = torch.cat([torch.zeros(100), torch.linspace(1, 100, 1000)])
    normalised = normalise_intensities(image)
    assert normalised.min() == 0 and normalised.max() == 1
    assert normalised[:100].eq(0).all()


def _tiny_training_setup(tmp_path, iterations: int) -> Path:
    maps = tmp_path / "maps"
    maps.mkdir(exist_ok=True)
    for index, labels in enumerate(_label_maps(), start=1):
        nb.save(
            nb.Nifti1Image(labels.numpy().astype(np.int16), np.eye(4)),
            maps / f"training_seg_{index:02d}.nii.gz",
        )
    np.save(maps / "labels.npy", np.array([0, 1, 2, 3]))
    np.save(maps / "classes.npy", np.array([0, 1, 2, 3]))
    config = {
        "name": "tiny",
        "task": "brain_mask",
        "label_maps": str(maps),
        "generation_labels": str(maps / "labels.npy"),
        "generation_classes": str(maps / "classes.npy"),
        "train_subjects": ["01"],
        "validation_subjects": ["02"],
        "test_subjects": [],
        "voxel_size_mm": 1.0,
        "sample_shape": [16, 16, 16],
        "features": [2, 4],
        "iterations": iterations,
        "validation_every": 2,
        "validation_samples": 1,
        "checkpoint_every": 1,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_train_writes_a_loadable_bundle_and_resumes(tmp_path):
    from bids_dl.models.train import train
    from bids_dl.models.train_config import TrainConfig

    bundle = train(TrainConfig.from_file(_tiny_training_setup(tmp_path, 2)), tmp_path / "run")
    card, _ = load_bundle(bundle)
    assert card.training["split"]["train"] == ["01"] and card.training["seed"] == 1
    assert card.metrics["validation_dice_synthetic"] is not None
    train(TrainConfig.from_file(_tiny_training_setup(tmp_path, 3)), tmp_path / "run")
    iterations = [
        line.split("\t")[0] for line in (tmp_path / "run" / "log.tsv").read_text().splitlines()
    ]
    assert iterations == ["iteration", "1", "2", "3"]


def test_worker_batches_are_reproducible_and_keep_each_samples_source():
    from bids_dl.models.sample_workers import worker_batches
    from bids_dl.models.samplers import MixedSampler

    generation = torch.tensor([0, 1, 2, 3])
    # the second source labels nothing, so a sample's target tells which source drew it
    sources = [torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 0])]

    def draw(seed: tuple[int, ...]) -> list:
        synthesisers = [
            LabelSynthesiser(_label_maps(), generation, t, (16, 16, 16)) for t in sources
        ]
        mixed = MixedSampler(synthesisers, [0.5, 0.5], seed=0)
        batches = worker_batches(mixed, 3, workers=2, seed=seed, pin_memory=False)
        return [next(batches) for _ in range(4)]

    first, again, other = draw((1, 0)), draw((1, 0)), draw((1, 50))
    for (images, targets, drawn), (images_2, targets_2, drawn_2) in zip(first, again, strict=True):
        assert torch.equal(images, images_2) and torch.equal(targets, targets_2)
        assert drawn == drawn_2
    assert not torch.equal(first[0][0], other[0][0])  # a resumed run draws new samples
    assert not torch.equal(first[0][0], first[1][0])  # the two workers draw different ones
    drawn = [source for _, _, batch_sources in first for source in batch_sources]
    has_target = [bool(t.any()) for _, targets, _ in first for t in targets]
    assert set(drawn) == {0, 1} and has_target == [source == 0 for source in drawn]


def test_train_stops_after_max_minutes_with_sample_workers_and_resumes(tmp_path):
    from bids_dl.models.train import train
    from bids_dl.models.train_config import TrainConfig

    config = TrainConfig.from_file(_tiny_training_setup(tmp_path, 4))
    config.sample_workers = 1
    bundle = train(config, tmp_path / "run", max_minutes=1e-9)
    card, _ = load_bundle(bundle)
    assert card.training["iterations_done"] == 1 and card.training["config"]["iterations"] == 4
    assert card.metrics["validation_dice_synthetic"] is not None  # scored where it stopped
    card, _ = load_bundle(train(config, tmp_path / "run"))
    log = (tmp_path / "run" / "log.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in log] == ["iteration", "1", "2", "3", "4"]
    assert card.training["iterations_done"] == 4
    config.sample_workers = -1
    with pytest.raises(ValueError, match="sample_workers"):
        train(config, tmp_path / "refused")


def test_segmentation_metrics_against_hand_computed_values():
    from bids_dl.models.metrics import hausdorff95, label_metrics, volume_difference

    reference = np.zeros((10, 10, 10), bool)
    reference[2:6, 2:6, 2:6] = True  # 64 voxels
    shifted = np.roll(reference, 2, axis=0)  # overlaps on 2 of 4 slices
    assert dice(reference, shifted) == pytest.approx(0.5)
    # every surface voxel of one cube is at most 2 voxels from the other's surface
    assert hausdorff95(reference, shifted, (1, 1, 1)) == pytest.approx(2.0)
    assert hausdorff95(reference, shifted, (3, 1, 1)) == pytest.approx(6.0)
    assert np.isnan(hausdorff95(reference, np.zeros_like(reference), (1, 1, 1)))
    assert volume_difference(shifted[:, :, :5], reference[:, :, :5], 2.0) == 0.0
    grown = reference.copy()
    grown[6, 2:6, 2:6] = True
    assert volume_difference(grown, reference, 2.0) == 32.0
    rows = label_metrics(grown.astype(int), reference.astype(int), {1: "cube"}, (1, 1, 1))
    assert rows[0]["dice"] == pytest.approx(2 * 64 / (80 + 64))


def test_train_and_evaluate_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from bids_dl.models_cli import models_main, train_main

    config = _tiny_training_setup(tmp_path, 2)
    result = CliRunner().invoke(train_main, [str(config), str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "run" / "bundle"
    image, inside = _sphere_image(np.diag([2.0, 2.0, 2.0, 1.0]), shape=(20, 20, 20))
    nb.save(image, tmp_path / "case.nii.gz")
    nb.save(nb.Nifti1Image(inside.astype(np.uint8), image.affine), tmp_path / "case_mask.nii.gz")
    result = CliRunner().invoke(
        models_main,
        [
            "evaluate",
            str(bundle),
            "--image",
            str(tmp_path / "case.nii.gz"),
            "--reference",
            str(tmp_path / "case_mask.nii.gz"),
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "eval" / "metrics.tsv").read_text().splitlines()
    assert rows[0].split("\t") == [
        "case",
        "label",
        "name",
        "dice",
        "hd95_mm",
        "volume_difference_mm3",
    ]
    assert len(rows) == 2 and rows[1].startswith("case\t1\tbrain\t")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["cases"] == 1 and 0 <= summary["mean_dice"] <= 1
    shown = CliRunner().invoke(models_main, ["show", str(bundle)])
    assert shown.exit_code == 0 and '"task": "brain_mask"' in shown.output


def test_model_brain_mask_node_records_the_model(tmp_path):
    from bids_dl.workflows.interfaces.deep_learning import model_brain_mask

    save_bundle(
        tmp_path / "b",
        _card(inputs={"voxel_size_mm": 2.0, "window": None}),
        UNet3D(1, 2, features=(2, 4)),
    )
    image, _ = _sphere_image(np.diag([-1.0, 1.0, 2.0, 1.0]), shape=(20, 22, 12))
    nb.save(image, tmp_path / "t1w.nii.gz")
    model = model_brain_mask(
        str(tmp_path / "t1w.nii.gz"), str(tmp_path / "b"), str(tmp_path / "mask.nii.gz"), "cpu"
    )
    mask = nb.load(tmp_path / "mask.nii.gz")
    assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
    assert set(np.unique(mask.get_fdata())) <= {0.0, 1.0}
    assert model == {"Name": "tiny", "Version": "0", "SHA256": weights_sha256(tmp_path / "b")}


@pytest.mark.parametrize("interface", ["ModelBrainMask", "ModelSegmentation", "ModelLesions"])
def test_a_changed_model_changes_the_node_hash(tmp_path, interface):
    """nipype hashes files, not folders: new weights or a new card under the same bundle path
    must re-run a node, not reuse a cached result from an older model."""
    from bids_dl.workflows.interfaces import deep_learning

    def node_hash(**inputs) -> str:
        return getattr(deep_learning, interface)(**inputs).inputs.get_hashval("content")[1]

    torch.manual_seed(0)
    save_bundle(tmp_path / "b", _card(), UNet3D(1, 2, features=(2, 4)))
    before = node_hash(bundle=str(tmp_path / "b"))
    save_bundle(tmp_path / "b", _card(), UNet3D(1, 2, features=(2, 4)))  # new weights
    after_weights = node_hash(bundle=str(tmp_path / "b"))
    save_bundle(tmp_path / "b", _card(version="1"), UNet3D(1, 2, features=(2, 4)))
    interface_set_later = getattr(deep_learning, interface)()
    interface_set_later.inputs.bundle = str(tmp_path / "b")
    assert len({before, after_weights, node_hash(bundle=str(tmp_path / "b"))}) == 3
    assert interface_set_later.inputs.get_hashval("content")[1] == node_hash(
        bundle=str(tmp_path / "b")
    )


def test_axis_aligned_fast_path_matches_the_general_resampling():
    """The separable path (axis-aligned grids) and grid_sample (oblique) agree voxel for voxel."""
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.softmax(torch.randn((3, 12, 10, 8), generator=generator), dim=0)
    model_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    native_affine = np.array(
        [[0, 0, -1.0, 30], [-1.2, 0, 0, 25], [0, 0.9, 0, -2], [0, 0, 0, 1]]
    )  # a permuted, flipped, anisotropic grid
    native_shape = (22, 20, 26)
    fast_index, fast = to_native(probabilities, model_affine, native_shape, native_affine)
    tilted = native_affine.copy()
    tilted[:3, :3] = tilted[:3, :3] + 1e-5  # no longer axis-aligned: the general path
    index, general = to_native(probabilities, model_affine, native_shape, tilted)
    assert np.abs(fast - general).max() < 1e-3
    assert (fast_index == index).mean() > 0.999
    assert 0 < (fast[0] == 1).mean() < 1  # part of the native grid lies outside the model grid


def test_fixed_test_contrasts_follow_the_tissue_tables():
    """T1w: WM > cortex > CSF; T2w: CSF > cortex > WM; FLAIR: cortex > WM > CSF; air dark."""
    labels = torch.zeros((30, 30, 30), dtype=torch.long)
    labels[3:27, 3:27, 3:27] = 3  # cortex
    labels[8:22, 8:22, 8:22] = 2  # white matter
    labels[12:18, 12:18, 12:18] = 4  # lateral ventricle (CSF)

    def mean(image, value):
        return float(image[labels == value].mean())

    images = {c: synthesise_test_image(labels, c, seed=0) for c in ("T1w", "T2w", "FLAIR")}
    t1, t2, flair = images["T1w"], images["T2w"], images["FLAIR"]
    assert mean(t1, 2) > mean(t1, 3) > mean(t1, 4) > mean(t1, 0)
    assert mean(t2, 4) > mean(t2, 3) > mean(t2, 2) > mean(t2, 0)
    assert mean(flair, 3) > mean(flair, 2) > mean(flair, 4)
    assert torch.equal(t1, synthesise_test_image(labels, "T1w", seed=0))


def test_structures_task_maps_label_values_to_sorted_channels(tmp_path):
    from bids_dl.models.labels import STRUCTURES
    from bids_dl.models.train_config import TrainConfig
    from bids_dl.models.training_data import lookup_tables

    config = TrainConfig.from_file(_tiny_training_setup(tmp_path, 1))
    np.save(tmp_path / "maps" / "labels.npy", np.array([0, 2, 3, 17, 24, 99, 502]))
    np.save(tmp_path / "maps" / "classes.npy", np.array([0, 1, 2, 3, 4, 5, 6]))
    config.task = "structures"
    _, target, names = lookup_tables(config)
    order = sorted(STRUCTURES)
    assert target[2] == 1 + order.index(2) and target[17] == 1 + order.index(17)
    assert target[99] == 0 and target[502] == 0  # not a structure: background
    assert sorted(names) == [0, *order] and names[17] == "Left-Hippocampus"


def test_a_brain_mask_restricts_a_brain_centred_model_to_its_box():
    image, inside = _sphere_image(np.diag([1.0, 1.0, 1.0, 1.0]), shape=(60, 60, 60))
    mask = np.zeros(image.shape, bool)
    mask[20:40, 20:40, 20:40] = True
    card = _card(inputs={"voxel_size_mm": 1.0, "window": None, "brain_crop_margin_mm": 2.0})
    labels, _ = segment(image, card, ThresholdNet(), mask=mask)
    assert labels[30, 30, 30] == 1
    assert labels[30, 30, 12] == 0 and inside[30, 30, 12]  # inside the sphere, outside the box
    whole, _ = segment(image, card, ThresholdNet())  # no mask: the whole field of view
    assert whole[30, 30, 12] == 1


def test_model_structures_node_writes_labels_tissues_and_probabilities(tmp_path):
    from bids_dl.models.labels import STRUCTURES
    from bids_dl.workflows.interfaces.deep_learning import model_structures

    labels = {0: "background"} | {v: row[0] for v, row in STRUCTURES.items()}
    card = _card(
        task="structures",
        architecture={"name": "UNet3D", "args": {"out_channels": len(labels), "features": [2, 4]}},
        inputs={"voxel_size_mm": 2.0, "window": None, "brain_crop_margin_mm": 4.0},
        outputs={"labels": {str(k): v for k, v in labels.items()}},
    )
    save_bundle(tmp_path / "b", card, UNet3D(1, len(labels), features=(2, 4)))
    image, inside = _sphere_image(np.diag([-1.0, 1.0, 2.0, 1.0]), shape=(20, 22, 12))
    nb.save(image, tmp_path / "t1w.nii.gz")
    nb.save(nb.Nifti1Image(inside.astype(np.uint8), image.affine), tmp_path / "mask.nii.gz")
    model_structures(
        str(tmp_path / "t1w.nii.gz"), str(tmp_path / "mask.nii.gz"), str(tmp_path / "b"),
        str(tmp_path), "cpu",
    )  # fmt: skip
    aseg = np.asarray(nb.load(tmp_path / "aseg.nii.gz").dataobj)
    tissues = np.asarray(nb.load(tmp_path / "dseg.nii.gz").dataobj)
    assert set(np.unique(aseg)) <= set(labels)
    assert set(np.unique(tissues)) <= {0, 1, 2, 3}
    # the tissue of every voxel is the tissue class of its structure
    for value, (_, tissue, *_) in STRUCTURES.items():
        assert np.all(tissues[aseg == value] == 1 + ("GM", "WM", "CSF").index(tissue))
    total = sum(nb.load(tmp_path / f"probseg_{t}.nii.gz").get_fdata() for t in ("GM", "WM", "CSF"))
    assert total.max() <= 1 + 1e-4 and total.shape == image.shape


def test_train_on_a_bids_dataset_with_labels_in_derivatives(tmp_path):
    """Users retrain on their own data: real images + dseg files from a derivatives folder."""
    from click.testing import CliRunner

    from bids_dl.models_cli import train_main

    bids, labels_dir = tmp_path / "bids", tmp_path / "bids" / "derivatives" / "labels"
    for subject in ("01", "02"):
        image, inside = _sphere_image(np.diag([1.5, 1.5, 1.5, 1.0]), shape=(20, 22, 18))
        (bids / f"sub-{subject}" / "anat").mkdir(parents=True)
        (labels_dir / f"sub-{subject}" / "anat").mkdir(parents=True)
        nb.save(image, bids / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz")
        dseg = nb.Nifti1Image(inside.astype(np.uint8) * 17, image.affine)  # left hippocampus
        nb.save(dseg, labels_dir / f"sub-{subject}" / "anat" / f"sub-{subject}_dseg.nii.gz")
    config = {
        "name": "own", "task": "structures", "source": "bids", "bids_dir": str(bids),
        "labels_dir": str(labels_dir), "train_subjects": ["01"], "validation_subjects": ["02"],
        "test_subjects": [], "voxel_size_mm": 2.0, "sample_shape": [16, 16, 16],
        "features": [2, 4], "iterations": 2, "validation_every": 2, "validation_samples": 1,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(train_main, [str(tmp_path / "config.json"), str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    card, network = load_bundle(tmp_path / "run" / "bundle")
    assert card.task == "structures" and card.inputs["contrasts"] == ["T1w"]
    assert "derivatives/labels" in card.training["data"] and network.head.out_channels == 33
    config |= {"init_from": str(tmp_path / "run" / "bundle"), "iterations": 1}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(train_main, [str(tmp_path / "config.json"), str(tmp_path / "ft")])
    assert result.exit_code == 0, result.output
    stages = load_bundle(tmp_path / "ft" / "bundle")[0].training["stages"]
    assert [s["iterations"] for s in stages] == [2, 1]  # the fine-tuned model keeps its history
    assert stages[1]["init_from"] == config["init_from"]
    config |= {"validation_subjects": ["01"]}  # validated on a training case: said so
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(train_main, [str(tmp_path / "config.json"), str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    assert set(load_bundle(tmp_path / "v" / "bundle")[0].metrics) == {"dice_on_training_cases_real"}
    assert set(load_bundle(tmp_path / "ft" / "bundle")[0].metrics) == {"validation_dice_real"}
    config |= {"features": [4, 8]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(train_main, [str(tmp_path / "config.json"), str(tmp_path / "r3")])
    assert result.exit_code != 0 and "not the architecture of this config" in result.output
    config |= {"train_subjects": ["03"], "init_from": ""}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(train_main, [str(tmp_path / "config.json"), str(tmp_path / "r2")])
    assert result.exit_code != 0 and "sub-03: need a T1w image" in result.output


def test_a_whole_head_model_sees_at_least_its_training_field_of_view():
    """A tightly cropped head is padded to the card's window, as in training (a head that
    fills the window looked nothing like the training images and was missed)."""
    seen = []

    class Recorder(ThresholdNet):
        def forward(self, x):
            seen.append(tuple(x.shape[2:]))
            return super().forward(x)

    image, inside = _sphere_image(np.diag([1.0, 1.0, 1.0, 1.0]), shape=(40, 42, 40))
    labels, _ = segment(
        image, _card(inputs={"voxel_size_mm": 1.0, "window": [64, 64, 64]}), Recorder()
    )
    assert seen == [(64, 64, 64)]
    assert dice(labels == 1, inside) > 0.9


def test_evaluate_reads_masks_stored_as_floats(tmp_path):
    from bids_dl.models.evaluate import Case, evaluate

    image, inside = _sphere_image(np.diag([2.0, 2.0, 2.0, 1.0]), shape=(20, 20, 20))
    nb.save(image, tmp_path / "case.nii.gz")
    float_mask = (inside * np.float32(0.99999997)).astype(np.float32)  # as some tools store them
    nb.save(nb.Nifti1Image(float_mask, image.affine), tmp_path / "mask.nii.gz")
    case = Case("case", tmp_path / "case.nii.gz", tmp_path / "mask.nii.gz")
    summary = evaluate(_card(), ThresholdNet(), [case], tmp_path / "eval")
    assert summary["mean_dice"] > 0.9


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    """bench/gpu_check.py: on a machine without CUDA it still runs every code path on the CPU
    and checks that two CPU runs give the same labels."""
    script = Path(__file__).parents[1] / "bench" / "gpu_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--models", "brain_mask,structures,wmh"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    rows = [
        line.split("\t")
        for line in result.stdout.splitlines()
        if line.startswith(("brain_mask", "structures", "wmh"))
    ]
    devices = {row[1] for row in rows}
    expected = {"cpu", "cuda"} if torch.cuda.is_available() else {"cpu"}
    assert devices == expected and len(rows) == 3 * len(expected) * 2
    assert all(float(row[4]) <= 0.005 for row in rows)
    assert "labels agree within tolerance" in result.stdout
