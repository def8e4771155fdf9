"""Train a U-Net; log, checkpoint, resume, write a bundle.

    bids_dl-train CONFIG.json OUTPUT_FOLDER

Two data sources: ``synthetic`` (images of random contrast synthesised from label maps,
SynthSeg-style) and ``bids`` (a BIDS dataset's real images with label maps in a derivatives
folder, deformed and corrupted the same way, for users who retrain on their own data). The
config (``train_config.TrainConfig``) names the task, the data and their split, the working
resolution, the network, the schedule and the seed. The output folder receives ``log.tsv``,
``checkpoint/`` (resumed automatically when present) and, at the end, the bundle (weights +
card).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bids_dl.models.bundle import build_network, load_bundle, save_bundle
from bids_dl.models.checkpoints import load_checkpoint, save_checkpoint
from bids_dl.models.device import resolve_device
from bids_dl.models.losses import batch_loss
from bids_dl.models.metrics import dice
from bids_dl.models.sample_workers import Batch, inline_batches, worker_batches
from bids_dl.models.samplers import Sampler
from bids_dl.models.synthesis import SynthesisParameters
from bids_dl.models.train_config import TrainConfig
from bids_dl.models.training_card import training_card, training_stages
from bids_dl.models.training_data import brats_region_classes, lookup_tables, make_samplers


@dataclass
class TrainingRun:
    """What the training loop works with, set up from a config (and its checkpoint)."""

    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sampler: Sampler
    batches: Iterator[Batch]
    validation_set: list[tuple[torch.Tensor, torch.Tensor]]
    names: dict[int, str]
    params: SynthesisParameters
    device: str
    start: int
    earlier_stages: list[dict]
    #: classes of the whole tumour when real samples are scored on it alone, else None
    tumor_classes: list[int] | None

    def step(self, batch: Batch) -> torch.Tensor:
        """One optimisation step on ``batch``; its loss."""
        self.network.train()
        images, targets, sources = batch
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        # bfloat16 on a GPU: mixed precision without a gradient scaler
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
            logits = self.network(images).float()
        whole_tumor_only = None
        if self.tumor_classes is not None:  # real images are the MixedSampler's first source
            whole_tumor_only = torch.tensor([s == 0 for s in sources]).to(self.device)
        loss = batch_loss(logits, targets, whole_tumor_only, self.tumor_classes)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss


def train(
    config: TrainConfig, output: Path, command: str = "", max_minutes: float | None = None
) -> Path:
    """Run (or resume) training and write the bundle into ``output/bundle``.

    ``max_minutes`` stops the run after the first iteration that ends past that wall-clock
    time (a GPU lease, a cluster job's limit): the checkpoint is saved, so running again
    resumes, and the bundle's card counts the iterations actually done.
    """
    run = set_up(config, output)
    log = output / "log.tsv"
    clock = time.perf_counter()
    iteration, validation_dice = run.start, None
    for iteration in range(run.start + 1, config.iterations + 1):
        loss = run.step(next(run.batches)).item()
        out_of_time = max_minutes is not None and time.perf_counter() - clock > max_minutes * 60
        last = iteration == config.iterations or out_of_time
        score = ""
        if _due(iteration, config.validation_every, last):
            score = f"{validate(run.network, run.validation_set):.4f}"
            validation_dice = float(score)
        with log.open("a") as handle:
            handle.write(f"{iteration}\t{loss:.4f}\t{score}\t{time.perf_counter() - clock:.1f}\n")
        if _due(iteration, config.checkpoint_every, last):
            save_checkpoint(
                output / "checkpoint",
                run.network,
                run.optimizer,
                iteration,
                run.sampler.generator.get_state(),
            )
        if _due(iteration, 10, last):
            print(
                f"\r[{iteration}/{config.iterations}] loss {loss:.4f} {score}",
                end="",
                file=sys.stderr,
                flush=True,
            )
        if out_of_time:
            print(f"\nstopped after {max_minutes} min, at iteration {iteration}", file=sys.stderr)
            break
    print(file=sys.stderr)
    card = training_card(
        config, run.names, run.params, iteration, validation_dice, command, run.earlier_stages
    )
    return save_bundle(output / "bundle", card, run.network.cpu())


def _due(iteration: int, every: int, last: bool) -> bool:
    """Whether a periodic step (validation, checkpoint, progress) runs after ``iteration``."""
    return iteration % every == 0 or last


def set_up(config: TrainConfig, output: Path) -> TrainingRun:
    """Seed, data, network, optimiser and schedule of a run; resumed from ``output``'s
    checkpoint when there is one, else with a fresh ``log.tsv``."""
    _check(config)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    output.mkdir(parents=True, exist_ok=True)
    generation, target, names = lookup_tables(config)
    sampler, validation, params = make_samplers(config, target, generation)
    validation_set = [validation.sample() for _ in range(config.validation_samples)]
    device = resolve_device(config.device)
    network, earlier_stages = _network(config, len(names))
    network = network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    start = 0
    resumed = load_checkpoint(output / "checkpoint", network, optimizer)
    if resumed:
        start, generator_state = resumed
        sampler.generator.set_state(generator_state)
    # polynomial decay, counted from the first iteration of the whole run (resumes included)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: max(0.0, 1 - (start + i) / max(config.iterations, 1)) ** 0.9
    )
    if start == 0:
        (output / "log.tsv").write_text("iteration\tloss\tvalidation_dice\tseconds\n")
    if config.sample_workers:  # a resumed run's workers draw a new stream, seeded by `start`
        batches = worker_batches(
            sampler, config.batch_size, config.sample_workers, (config.seed, start),
            pin_memory=device == "cuda",
        )  # fmt: skip
    else:
        batches = inline_batches(sampler, config.batch_size)
    tumor_classes = None
    if config.real_whole_tumor_only:
        tumor_classes = brats_region_classes(config, names)[0]
    return TrainingRun(
        network, optimizer, scheduler, sampler, batches, validation_set, names, params,
        device, start, earlier_stages, tumor_classes,
    )  # fmt: skip


def _check(config: TrainConfig) -> None:
    """Refuse settings that do not go together, before any work."""
    if config.sample_workers < 0:
        raise ValueError(f"sample_workers {config.sample_workers}: 0 or more processes")
    if config.brats_region_decoding and config.task != "tumor":
        raise ValueError(f"BraTS regions are for the tumor task, not {config.task!r}")
    if config.real_whole_tumor_only and (config.task != "tumor" or not config.synthetic_share):
        raise ValueError(
            "real_whole_tumor_only is for the tumor task with synthetic_share: the "
            "simulated samples are what teach the tumour's sub-regions"
        )


def _network(config: TrainConfig, out_channels: int) -> tuple[torch.nn.Module, list[dict]]:
    """A new U-Net, or one with the weights of ``init_from`` (fine-tuning), and the training
    stages of that starting bundle."""
    network = build_network(config.architecture(out_channels))
    if not config.init_from:
        return network, []
    pretrained_card, pretrained = load_bundle(config.init_from)
    shapes = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    if {name: tuple(t.shape) for name, t in pretrained.state_dict().items()} != shapes:
        raise ValueError(f"init_from {config.init_from}: not the architecture of this config")
    network.load_state_dict(pretrained.state_dict())
    return network, training_stages(pretrained_card.training)


@torch.no_grad()
def validate(network: torch.nn.Module, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean foreground Dice over fixed validation samples."""
    network.eval()
    device = next(network.parameters()).device
    scores = []
    for image, target in samples:
        prediction = network(image[None].to(device)).argmax(1)[0].cpu()
        labels = [int(v) for v in torch.unique(target) if v > 0]
        scores.extend(
            dice((prediction == label).numpy(), (target == label).numpy()) for label in labels
        )
    return float(np.mean(scores)) if scores else 0.0
