"""The ``train-segmentation`` and ``evaluate-segmentation`` commands."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidct.errors import InputError
from covidct.report.writer import write_atomic

# torch, monai and OpenCV load in about 5 s, so they are imported when a
# segmentation command runs, not when the command line is built.
if TYPE_CHECKING:
    from covidct.segment.cnn.data import SliceSet

__all__ = [
    "add_segmentation_parsers",
    "add_segmenter_arguments",
    "check_segmenter_arguments",
]

logger = logging.getLogger(__name__)

#: Members that ``--members`` can name, with the neighbouring slices each reads.
MEMBER_CONTEXT = {"unet2d": 0, "unet25d": 1}


def add_segmenter_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--method`` and ``--model``, the segmentation choice of analyses."""
    parser.add_argument(
        "--method",
        choices=["cnn", "threshold"],
        default="cnn",
        help="segmentation backend: the network ensemble (default) or the HU "
        "threshold rules",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="FOLDER",
        help="bundle folder written by train-segmentation (default: the bundled "
        "weights)",
    )


def check_segmenter_arguments(args: argparse.Namespace) -> None:
    """Reject ``--model`` given together with ``--method threshold``."""
    if args.model is not None and args.method != "cnn":
        raise InputError(
            "--model sets the network ensemble, but --method threshold uses none",
            path=args.model,
            hint="Drop --model, or drop --method threshold.",
        )


def add_segmentation_parsers(commands: argparse._SubParsersAction) -> None:
    """Add the two segmentation commands to the ``covidct`` parser."""
    train = commands.add_parser(
        "train-segmentation",
        help="train the lung and lesion network ensemble",
        description=(
            "Train each member of the ensemble on 2D slices with masks and/or "
            "NIfTI image and label-map pairs, keep the epoch with the best "
            "validation Dice, and write a bundle folder (ensemble.json, the "
            "weights, MODEL_CARD.md) that `covidct analyze --model` reads. "
            "Slices of one patient never go to two splits. An interrupted run "
            "resumes from its checkpoints when started again with the same "
            "arguments."
        ),
    )
    train.add_argument("--slices", type=Path, help="folder of 2D slices and masks")
    train.add_argument(
        "--patients",
        type=Path,
        metavar="CSV",
        help="file,patient[,split] table of the slices (split: train, "
        "validation or test; test slices are never trained on)",
    )
    train.add_argument(
        "--normalized",
        action="store_true",
        help="the slices were already resized to 256 x 256, min-max scaled and "
        "CLAHE-equalised, as the ma20-8bit export; give it for such sets, "
        "because without it they are equalised a second time",
    )
    train.add_argument(
        "--volumes", type=Path, help="folder with images/ and labels/ NIfTI pairs"
    )
    train.add_argument(
        "-o", "--output", type=Path, required=True, help="bundle folder (created)"
    )
    train.add_argument(
        "--members",
        default="unet2d,unet25d",
        help="comma-separated members: unet2d (one slice), unet25d (three "
        "neighbouring slices); default: both",
    )
    train.add_argument("--epochs", type=int, default=25, help="epochs per member")
    train.add_argument("--batch-size", type=int, default=16, help="slices per step")
    train.add_argument(
        "--learning-rate", type=float, default=2e-3, help="peak AdamW learning rate"
    )
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument(
        "--validation-fraction",
        type=float,
        default=0.15,
        help="share of the patients without an assigned split that validate",
    )
    train.add_argument(
        "--device", default="auto", help="cpu, cuda or auto (a GPU when present)"
    )
    train.add_argument("--threads", type=int, default=0, help="CPU threads for torch")
    train.add_argument(
        "--init",
        metavar="FOLDER",
        help="fine-tune: start each member from the member of the same name in "
        "this bundle folder ('bundled' for the weights shipped with covidct)",
    )
    train.add_argument(
        "--restart",
        action="store_true",
        help="ignore existing checkpoints in the output folder",
    )
    train.set_defaults(run=_run_train)

    evaluate = commands.add_parser(
        "evaluate-segmentation",
        help="compare a segmenter with reference masks",
        description=(
            "Compute Dice, the 95th percentile Hausdorff distance and the volume "
            "error per class (lung, lesion, ground-glass opacity, consolidation). "
            "PRED_OR_MODEL is 'cnn' (the bundled ensemble), 'threshold' (the "
            "threshold backend), a bundle folder, or a folder of label maps "
            "written earlier (for NIfTI data only)."
        ),
    )
    evaluate.add_argument("segmenter", metavar="PRED_OR_MODEL")
    evaluate.add_argument(
        "data",
        type=Path,
        help="folder of 2D slices and masks, or of images/ and labels/ NIfTI pairs",
    )
    evaluate.add_argument("--patients", type=Path, metavar="CSV", help="as in training")
    evaluate.add_argument(
        "--split",
        choices=["train", "validation", "test"],
        help="evaluate only the slices of this split (needs --patients)",
    )
    evaluate.add_argument(
        "--normalized",
        action="store_true",
        help="the slices were already normalised, as the ma20-8bit export "
        "(as in train-segmentation; without it they are equalised again and "
        "the figures are wrong)",
    )
    evaluate.add_argument("--json", type=Path, help="also write the figures here")
    evaluate.set_defaults(run=_run_evaluate)


def _assign_splits(data: SliceSet, fraction: float, seed: int) -> None:
    """Give patients without a split to validation (``fraction``) or training."""
    import numpy as np

    unassigned = sorted(
        {p for p, s in zip(data.patients, data.splits, strict=True) if not s}
    )
    if not unassigned:
        return
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(unassigned))
    count = min(len(order) - 1, max(1, math.ceil(fraction * len(order))))
    validation = set(order[:count]) if len(order) > 1 else set()
    for index, patient in enumerate(data.patients):
        if not data.splits[index]:
            data.splits[index] = "validation" if patient in validation else "train"


def _read_training_data(args: argparse.Namespace) -> SliceSet:
    from covidct.segment.cnn.data import (
        SliceSet,
        read_slice_folder,
        read_volume_folder,
    )

    parts = []
    if args.slices is not None:
        parts.append(read_slice_folder(args.slices, args.patients, args.normalized))
    if args.volumes is not None:
        parts.append(read_volume_folder(args.volumes))
    if not parts:
        raise InputError(
            "no training data given",
            hint="Give --slices FOLDER and/or --volumes FOLDER.",
        )
    data = SliceSet.concatenate(parts) if len(parts) > 1 else parts[0]
    _assign_splits(data, args.validation_fraction, args.seed)
    return data


def _run_train(args: argparse.Namespace) -> int:
    from covidct.segment.cnn.train import TrainingOptions, train_member

    names = [n.strip() for n in args.members.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEMBER_CONTEXT]
    if unknown or not names:
        raise InputError(
            f"unknown ensemble member {unknown[0] if unknown else '(none)'!r} "
            "in --members",
            hint=f"Choose from {', '.join(MEMBER_CONTEXT)}.",
        )
    data = _read_training_data(args)
    train = data.select("train")
    validation = data.select("validation")
    if not len(train):
        raise InputError(
            "no slices are left for training after the split",
            hint="Assign more patients to train in --patients.",
        )
    logger.info(
        "training on %d slices of %d patients, validating on %d slices of %d",
        len(train),
        len(set(train.patients)),
        len(validation),
        len(set(validation.patients)),
    )
    initial = _initial_states(args.init, names)
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    members = []
    for name in names:
        member_dir = output / "runs" / name
        if args.restart and member_dir.exists():
            shutil.rmtree(member_dir)
        options = TrainingOptions(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            context_slices=MEMBER_CONTEXT[name],
            seed=args.seed,
            device=args.device,
            threads=args.threads,
        )
        try:
            summary = train_member(
                train, validation, member_dir, options, initial_state=initial.get(name)
            )
        except KeyboardInterrupt:
            print(
                f"Training of {name} stopped. Run the same command again to resume "
                "from the last finished epoch.",
                file=sys.stderr,
            )
            raise
        members.append((name, summary))
    card = write_bundle(output, members, data)
    print(f"bundle written to {output} ({len(card['members'])} members)")
    return 0


def _initial_states(source: str | None, names: list[str]) -> dict[str, Any]:
    """Read the weights to fine-tune from, one per member name."""
    from covidct.segment.cnn.bundle import load_bundle

    if source is None:
        return {}
    bundle = load_bundle(None if source == "bundled" else Path(source))
    available = {member.name: member for member in bundle.members}
    missing = [name for name in names if name not in available]
    if missing:
        raise InputError(
            f"the bundle has no member named {missing[0]!r} to start from",
            path=bundle.path,
            hint=f"Choose --members from {', '.join(available)}.",
        )
    return {name: available[name].network.state_dict() for name in names}


def write_bundle(
    output: Path, members: list[tuple[str, dict[str, Any]]], data: SliceSet
) -> dict[str, Any]:
    """Copy each member's best weights into the bundle and write its card."""
    import torch

    from covidct.segment.cnn.bundle import CARD_FILE, FORMAT_VERSION, sha256_of
    from covidct.segment.cnn.normalization import HU_RANGE, INPUT_SIZE
    from covidct.segment.cnn.train import BEST

    entries = []
    for name, summary in members:
        best = torch.load(output / "runs" / name / BEST, map_location="cpu")
        weights = output / f"{name}.pt"
        temporary = weights.with_suffix(".pt.tmp")
        torch.save(best["network"], temporary)
        temporary.replace(weights)
        entries.append(
            {
                "name": name,
                "file": weights.name,
                "sha256": sha256_of(weights),
                "weight": 1.0,
                "spec": summary["spec"],
                "training": {
                    key: summary[key]
                    for key in (
                        "options",
                        "training_slices",
                        "training_patients",
                        "validation_slices",
                        "validation_patients",
                        "best_epoch",
                        "best_validation_dice",
                    )
                },
            }
        )
    card = {
        "format": FORMAT_VERSION,
        "name": output.name,
        "classes": ["background", "lung", "lesion"],
        "input": {
            "size": INPUT_SIZE,
            "hu_range": list(HU_RANGE),
            "normalization": "resize to 256 x 256 (bicubic), per-slice min-max to "
            "0..255, CLAHE clip limit 7 with 8 x 8 tiles",
        },
        "flip_left_right": False,
        "members": entries,
        "data": {
            "slices": len(data),
            "patients": len(set(data.patients)),
            "splits": {
                split: sorted(
                    {
                        p
                        for p, s in zip(data.patients, data.splits, strict=True)
                        if s == split
                    }
                )
                for split in ("train", "validation", "test")
            },
        },
    }
    write_atomic(output / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
    write_atomic(output / "MODEL_CARD.md", _model_card_text(card).encode())
    return card


def _model_card_text(card: dict[str, Any]) -> str:
    """Write the readable model card of a bundle from its ``ensemble.json``."""
    splits = card["data"]["splits"]
    lines = [
        f"# Model card: covidct lung and lesion ensemble `{card['name']}`",
        "",
        "**Research use only. Not a medical device.**",
        "",
        "Written by `covidct train-segmentation`; complete the sections marked "
        "TODO before sharing the bundle.",
        "",
        f"- Data: {card['data']['slices']} slices of {card['data']['patients']} "
        "patients.",
        f"- Training patients: {', '.join(splits['train']) or 'none'}.",
        f"- Validation patients: {', '.join(splits['validation']) or 'none'}.",
        f"- Test patients (never trained on): {', '.join(splits['test']) or 'none'}.",
        f"- Input: {card['input']['normalization']}; HU clipped to "
        f"{card['input']['hu_range']} for CT volumes.",
        "- Members:",
    ]
    for member in card["members"]:
        training = member["training"]
        dice = ", ".join(
            f"{name} {value:.3f}"
            for name, value in training["best_validation_dice"].items()
        )
        lines.append(
            f"  - `{member['name']}` ({member['file']}, SHA-256 "
            f"{member['sha256'][:12]}...): {training['options']['epochs']} epochs, "
            f"best epoch {training['best_epoch']}, validation Dice {dice or 'n/a'}."
        )
    lines += [
        "- TODO: licence. The weights inherit the licence of the training data.",
        "- TODO: test figures (`covidct evaluate-segmentation BUNDLE DATA "
        "--patients CSV --split test`).",
        "",
    ]
    return "\n".join(lines)


def _patients_in(data: SliceSet, split: str) -> list[str]:
    pairs = zip(data.patients, data.splits, strict=True)
    return sorted({patient for patient, assigned in pairs if assigned == split})


def _run_evaluate(args: argparse.Namespace) -> int:
    from covidct.segment.cnn.bundle import CARD_FILE, load_bundle
    from covidct.segment.cnn.data import read_slice_folder
    from covidct.segment.cnn.evaluate import evaluate_slices, evaluate_volumes

    segmenter: Any
    if args.segmenter == "threshold":
        segmenter = "threshold"
    elif args.segmenter == "cnn":
        segmenter = load_bundle()
    else:
        path = Path(args.segmenter)
        if (path / CARD_FILE).is_file():
            segmenter = load_bundle(path)
        elif path.is_dir():
            segmenter = path
        else:
            raise InputError(
                "not a bundle folder, a folder of label maps, 'cnn' or 'threshold'",
                path=path,
                hint="Give 'cnn', 'threshold', a folder written by "
                "`covidct train-segmentation`, or a folder of label maps.",
            )

    if (args.data / "images").is_dir() and (args.data / "labels").is_dir():
        results = evaluate_volumes(args.data, segmenter)
    else:
        if isinstance(segmenter, Path):
            raise InputError(
                "label-map folders can only be compared with NIfTI references",
                path=segmenter,
                hint="Give 'cnn', 'threshold' or a bundle folder for 2D slices.",
            )
        data = read_slice_folder(args.data, args.patients, args.normalized)
        if args.split:
            if args.patients is None:
                raise InputError(
                    "--split needs --patients", hint="Give the patient table."
                )
            data = data.select(args.split)
        if not isinstance(segmenter, str):
            splits = segmenter.card.get("data", {}).get("splits", {})
            trained = set(splits.get("train", []))
            seen = sorted(trained & set(data.patients))
            if seen:
                logger.warning(
                    "%d of the evaluated patients were in the bundle's training "
                    "split (for example %s), so the figures overstate accuracy; "
                    "evaluate on held-out patients (--split test)",
                    len(seen),
                    seen[0],
                )
        results = evaluate_slices(data, segmenter)
    results["segmenter"] = args.segmenter
    results["data"] = str(args.data)
    _print_results(results)
    if args.json is not None:
        write_atomic(args.json, (json.dumps(results, indent=2) + "\n").encode())
    return 0


def _print_results(results: dict[str, Any]) -> None:
    cases = results.get("slices", results.get("volumes"))
    print(f"{results['segmenter']} on {results['data']}: {cases} cases")
    print(f"{'class':<14} {'Dice':>6} {'mean':>6} {'HD95':>7} {'vol err %':>9}")
    for name, figures in results["classes"].items():
        print(
            f"{name:<14} {figures['dice']:6.3f} {figures['mean_case_dice']:6.3f} "
            f"{figures['hd95_median']:7.1f} {figures['volume_error_percent']:9.1f}"
        )
    print(f"(HD95 in {results['unit']})")
