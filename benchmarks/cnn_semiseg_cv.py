"""Cross-validated lesion, GGO and consolidation Dice on covid-semiseg.

covid-semiseg has only 50 slices, cut from published figures with unknown
windows, so the bundled networks (trained on ma20-8bit alone) meet it as a
new source. This benchmark measures what fine-tuning on that source gives.
For each of 5 folds, both members start from the bundled weights. They train
for a few epochs on the other 40 semiseg slices (lesion labels only), mixed
with 120 ma20-8bit training slices (lung and lesion labels). The fine-tuned
ensemble, with the bundled card's settings, then segments the 10 held-out
slices. Dice is pooled over the 50 held-out predictions.

Usage:
    .venv/bin/python -P benchmarks/cnn_semiseg_cv.py [--data ../shared/data]
        [--epochs 8] [--folds 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from covidct.segment.cnn.bundle import load_bundle
from covidct.segment.cnn.data import LESION, SliceSet, read_slice_folder
from covidct.segment.cnn.evaluate import predict_slice_masks
from covidct.segment.cnn.metrics import ClassTally
from covidct.segment.cnn.train import TrainingOptions, train_member
from covidct.segment.result import CONSOLIDATION, GGO

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PATIENTS = (
    Path(__file__).resolve().parents[1] / "src/covidct/segment/cnn/splits/ma20-8bit.csv"
)
MA20_SLICES_PER_FOLD = 120
SEED = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    semiseg_dir = args.data / "covid-semiseg" / "train-multiclass"
    ma20_dir = args.data / "ma20-8bit"
    for folder in (semiseg_dir, ma20_dir):
        if not folder.is_dir():
            print(f"data not found: {folder}; pass --data", file=sys.stderr)
            return 2

    started = time.perf_counter()
    bundle = load_bundle()
    semiseg = read_slice_folder(semiseg_dir)
    assert semiseg.lesion_classes is not None
    ma20_train = read_slice_folder(ma20_dir, PATIENTS, normalized=True).select("train")
    rng = np.random.default_rng(SEED)
    folds = np.array_split(rng.permutation(len(semiseg)), args.folds)

    lungs = np.zeros(semiseg.targets.shape, dtype=bool)
    classes = np.zeros(semiseg.targets.shape, dtype=np.uint8)
    for number, held_out in enumerate(folds, start=1):
        rest = np.setdiff1d(np.arange(len(semiseg)), held_out)
        extra = rng.choice(len(ma20_train), MA20_SLICES_PER_FOLD, replace=False)
        train = SliceSet.concatenate(
            [semiseg.subset(rest), ma20_train.subset(np.sort(extra))]
        )
        tuned = copy.deepcopy(bundle)
        for member in tuned.members:
            options = TrainingOptions(
                epochs=args.epochs,
                learning_rate=5e-4,
                context_slices=member.context_slices,
                seed=SEED + number,
            )
            with tempfile.TemporaryDirectory() as folder:
                train_member(
                    train,
                    train.subset([]),
                    Path(folder),
                    options,
                    progress=False,
                    initial_state=member.network.state_dict(),
                )
                state = torch.load(Path(folder) / "best.pt", map_location="cpu")
                member.network.load_state_dict(state["network"])
                member.network.eval()
        fold = semiseg.subset(held_out)
        fold_lungs, fold_classes = predict_slice_masks(fold, tuned)
        lungs[held_out] = fold_lungs
        classes[held_out] = fold_classes
        print(
            f"fold {number}/{len(folds)} done ({time.perf_counter() - started:.0f} s)"
        )

    tallies = {name: ClassTally() for name in ("lesion", "ggo", "consolidation")}
    for index in range(len(semiseg)):
        reference = semiseg.lesion_classes[index]
        tallies["lesion"].add(
            classes[index] > 0, semiseg.targets[index] == LESION, (1.0, 1.0)
        )
        tallies["ggo"].add(classes[index] == GGO, reference == 1, (1.0, 1.0))
        tallies["consolidation"].add(
            classes[index] == CONSOLIDATION, reference == 2, (1.0, 1.0)
        )
    results = {name: tally.summary() for name, tally in tallies.items()}
    print(f"\ncovid-semiseg, {len(folds)}-fold cross-validated fine-tuning")
    print("| class | pooled Dice | mean slice Dice | HD95 (px) |")
    print("|---|---:|---:|---:|")
    for name, figures in results.items():
        print(
            f"| {name} | {figures['dice']:.3f} | {figures['mean_case_dice']:.3f} "
            f"| {figures['hd95_median']:.1f} |"
        )
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
