"""Training of one segmentation network on a ``SliceSet``.

Each epoch visits every training slice once in a seeded random order, with
random affine deformation, left-right flips and intensity changes (gamma,
contrast, brightness, blur, noise) so that the network does not depend on one
window or scanner. After each epoch the Dice of lung and lesion on the
validation slices is measured; the best epoch's weights are kept.
A checkpoint after every epoch lets an interrupted run resume where it
stopped, with the same random state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from covidct.errors import InputError
from covidct.segment.cnn.data import LESION, LUNG, NOT_LESION, SliceSet
from covidct.segment.cnn.network import build_network, default_spec

__all__ = ["TrainingOptions", "choose_device", "predict_slices", "train_member"]

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


@dataclass
class TrainingOptions:
    """Settings of one training run.

    Attributes:
        epochs: Passes over the training slices.
        batch_size: Slices per optimiser step.
        learning_rate: Peak learning rate of AdamW (cosine decay after a
            one-epoch warm-up).
        weight_decay: AdamW weight decay.
        context_slices: Neighbouring slices on each side given as channels.
        seed: Seed of every random choice (order, augmentation, weights).
        device: "cpu", "cuda" or "auto" (a GPU when present).
        threads: CPU threads for torch; 0 keeps torch's default.
    """

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    context_slices: int = 0
    seed: int = 0
    device: str = "auto"
    threads: int = 0


def choose_device(name: str) -> torch.device:
    """Resolve "auto" to a GPU when torch finds one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("a CUDA device was requested but torch finds no GPU")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _batch(
    data: SliceSet, indices: np.ndarray, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.stack([data.stack(int(i), context) for i in indices])
    targets = data.targets[indices]
    return (
        torch.from_numpy(images).float().div_(255.0),
        torch.from_numpy(targets.astype(np.int64)),
    )


def _augment(
    images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a random affine map, flip and intensity change per slice."""
    count = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(count, generator=generator) * (high - low) + low

    angle = uniform(-15.0, 15.0) * math.pi / 180.0
    scale = torch.exp(uniform(-0.15, 0.15))
    flip = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    shift_x = uniform(-0.08, 0.08)
    shift_y = uniform(-0.08, 0.08)
    cos = torch.cos(angle) / scale
    sin = torch.sin(angle) / scale
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = shift_x
    theta[:, 1, 2] = shift_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", align_corners=False)
    targets = (
        F.grid_sample(
            targets[:, None].float(), grid, mode="nearest", align_corners=False
        )
        .squeeze(1)
        .long()
    )

    gamma = torch.exp(uniform(-0.4, 0.4)).view(-1, 1, 1, 1)
    images = images.clamp(0.0, 1.0).pow(gamma)
    contrast = uniform(0.75, 1.25).view(-1, 1, 1, 1)
    brightness = uniform(-0.08, 0.08).view(-1, 1, 1, 1)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast + mean + brightness
    blur = (torch.rand(count, generator=generator) < 0.2).view(-1, 1, 1, 1)
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    images = torch.where(blur, blurred, images)
    sigma = uniform(0.0, 0.04).view(-1, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator) * sigma
    return (images + noise).clamp(0.0, 1.0), targets


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy that accepts "background or lung" pixels, plus soft Dice.

    For a pixel with code ``NOT_LESION`` the cross-entropy term is minus the
    log of the summed probability of background and lung. The soft Dice terms
    cover the lesion over every slice and the lung (lung or lesion) over the
    slices whose lungs are labelled.
    """
    log_probs = F.log_softmax(logits, dim=1)
    known = targets != NOT_LESION
    safe = torch.where(known, targets, torch.zeros_like(targets))
    picked = log_probs.gather(1, safe[:, None]).squeeze(1)
    either = torch.logsumexp(log_probs[:, :2], dim=1)
    cross_entropy = -torch.where(known, picked, either).mean()

    probs = log_probs.exp()
    lesion_p = probs[:, LESION]
    lesion_t = (targets == LESION).float()
    dice_lesion = 1 - (2 * (lesion_p * lesion_t).sum() + 1) / (
        lesion_p.sum() + lesion_t.sum() + 1
    )
    lung_known = known.flatten(1).all(dim=1)
    loss = cross_entropy + dice_lesion
    if lung_known.any():
        lung_p = (probs[:, LUNG] + lesion_p)[lung_known]
        lung_t = ((targets == LUNG) | (targets == LESION)).float()[lung_known]
        dice_lung = 1 - (2 * (lung_p * lung_t).sum() + 1) / (
            lung_p.sum() + lung_t.sum() + 1
        )
        loss = loss + 0.5 * dice_lung
    return loss


@torch.no_grad()
def predict_slices(
    network: torch.nn.Module,
    data: SliceSet,
    context: int,
    device: torch.device,
    batch_size: int = 32,
) -> np.ndarray:
    """Return softmax probabilities ``(n, 3, H, W)`` float32 for every slice."""
    network.eval()
    outputs = []
    for start in range(0, len(data), batch_size):
        indices = np.arange(start, min(start + batch_size, len(data)))
        images, _ = _batch(data, indices, context)
        logits = network(images.to(device))
        outputs.append(torch.softmax(logits, dim=1).cpu().numpy())
    return np.concatenate(outputs)


def dice_scores(probabilities: np.ndarray, data: SliceSet) -> dict[str, float]:
    """Pooled Dice of lung and lesion over a set of slices."""
    predicted = probabilities.argmax(axis=1)
    scores: dict[str, float] = {}
    lesion_pred = predicted == LESION
    lesion_true = data.targets == LESION
    scores["lesion"] = _dice(lesion_pred, lesion_true)
    labelled = ~(data.targets == NOT_LESION).reshape(len(data), -1).any(axis=1)
    if labelled.any():
        lung_pred = predicted[labelled] != 0
        lung_true = np.isin(data.targets[labelled], (LUNG, LESION))
        scores["lung"] = _dice(lung_pred, lung_true)
    return scores


def _dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    total = int(predicted.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((predicted & truth).sum()) / total


def _save_atomic(payload: Any, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=path.name, suffix=".tmp"
    )
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _data_key(train: SliceSet, validation: SliceSet) -> str:
    """Fingerprint the slices and patients of both splits, for resuming."""
    digest = hashlib.sha256()
    for part in (train, validation):
        for name, patient in zip(part.names, part.patients, strict=True):
            digest.update(f"{name}\t{patient}\n".encode())
        digest.update(b"--split--\n")
    return digest.hexdigest()


def _check_resumable(
    state: dict[str, Any],
    options: dict[str, Any],
    data_key: str,
    checkpoint_path: Path,
) -> None:
    """Reject a checkpoint written with other options or other data."""
    changed = [
        f"{key} {state['options'].get(key)!r} -> {value!r}"
        for key, value in options.items()
        if state["options"].get(key) != value
    ]
    if changed:
        raise InputError(
            "the checkpoint in the output folder was written with other "
            f"options ({', '.join(changed)})",
            path=checkpoint_path,
            hint="Pass --restart to train from the start, or use another output "
            "folder.",
        )
    if state.get("data_key") != data_key:
        raise InputError(
            "the checkpoint in the output folder was trained on other slices or "
            "another patient split",
            path=checkpoint_path,
            hint="Pass --restart to train from the start, or use another output "
            "folder.",
        )


def train_member(
    train: SliceSet,
    validation: SliceSet,
    output_dir: Path,
    options: TrainingOptions,
    resume: bool = True,
    progress: bool = True,
    initial_state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train one network and write ``best.pt`` and ``checkpoint.pt``.

    Args:
        train: Slices to learn from.
        validation: Slices of other patients, for the choice of the best epoch.
        output_dir: Folder of the checkpoints (created).
        options: Epochs, batch size, seed, device.
        resume: Continue from ``checkpoint.pt`` when it exists and was written
            with the same options.
        progress: Show a progress bar with the loss and validation Dice.
        initial_state: Weights to start from (fine-tuning) in place of a
            random initialisation; they must fit the member's network.

    Returns:
        A summary: the network specification, options, best epoch and its
        validation Dice, and the Dice of every epoch.
    """
    if len(train) == 0:
        raise ValueError("no training slices")
    output_dir.mkdir(parents=True, exist_ok=True)
    device = choose_device(options.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    _seed_everything(options.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)

    spec = default_spec(options.context_slices)
    network = build_network(spec)
    if initial_state is not None:
        network.load_state_dict(initial_state)
    network = network.to(device)
    optimizer = torch.optim.AdamW(
        network.parameters(),
        lr=options.learning_rate,
        weight_decay=options.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train) / options.batch_size)
    total_steps = steps_per_epoch * options.epochs

    def learning_rate_factor(step: int) -> float:
        if step < steps_per_epoch:
            return (step + 1) / steps_per_epoch
        progress_fraction = (step - steps_per_epoch) / max(
            1, total_steps - steps_per_epoch
        )
        return 0.5 * (1 + math.cos(math.pi * progress_fraction))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    generator = torch.Generator().manual_seed(options.seed)
    order_rng = np.random.default_rng(options.seed)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"epoch": -1, "score": -1.0, "dice": {}}
    start_epoch = 0

    checkpoint_path = output_dir / CHECKPOINT
    data_key = _data_key(train, validation)
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        _check_resumable(state, asdict(options), data_key, checkpoint_path)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        order_rng.bit_generator.state = state["order_rng"]
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        best = state["best"]
        start_epoch = state["epoch"] + 1
        message = f"resuming {output_dir} at epoch {start_epoch + 1}"
        logger.info(message)
        if progress:
            tqdm.write(message)

    context = options.context_slices
    for epoch in range(start_epoch, options.epochs):
        network.train()
        order = order_rng.permutation(len(train))
        started = time.monotonic()
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"epoch {epoch + 1}/{options.epochs}",
            disable=not progress,
            leave=False,
        )
        running = 0.0
        for step in bar:
            indices = order[step * options.batch_size : (step + 1) * options.batch_size]
            images, targets = _batch(train, indices, context)
            images, targets = _augment(images, targets, generator)
            logits = network(images.to(device))
            loss = segmentation_loss(logits, targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = loss.item()
            running = 0.9 * running + 0.1 * value if step else value
            bar.set_postfix(loss=f"{running:.3f}")
        bar.close()

        dice = (
            dice_scores(
                predict_slices(network, validation, context, device), validation
            )
            if len(validation)
            else {}
        )
        score = sum(dice.values())
        history.append({"epoch": epoch + 1, "loss": running, **dice})
        message = (
            f"epoch {epoch + 1}/{options.epochs}: loss {running:.3f}, "
            + ", ".join(f"validation {k} Dice {v:.3f}" for k, v in dice.items())
            + f" ({time.monotonic() - started:.0f} s)"
        )
        if progress:
            tqdm.write(message)
        logger.info(message)
        if score > best["score"] or not len(validation):
            best = {"epoch": epoch + 1, "score": score, "dice": dice}
            _save_atomic(
                {"spec": spec, "network": network.state_dict()}, output_dir / BEST
            )
        _save_atomic(
            {
                "options": asdict(options),
                "epoch": epoch,
                "network": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "order_rng": order_rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "best": best,
                "data_key": data_key,
            },
            checkpoint_path,
        )

    summary = {
        "spec": spec,
        "options": asdict(options),
        "training_slices": len(train),
        "training_patients": len(set(train.patients)),
        "validation_slices": len(validation),
        "validation_patients": len(set(validation.patients)),
        "best_epoch": best["epoch"],
        "best_validation_dice": best["dice"],
        "history": history,
    }
    (output_dir / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
