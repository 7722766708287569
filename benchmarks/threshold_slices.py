"""Measure the 2D threshold backend on the 8-bit slice sets ma20-8bit and semiseg.

Prints per-slice mean Dice and global (pooled-pixel) Dice of the lungs and the
lesions. ma20-8bit is split by patient: patients 1-10 (files 0000-1246) were
used to tune the thresholds of ``SliceOptions``, patients 11-20 are held out.

Usage::

    python benchmarks/threshold_slices.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from covidct.segment.lesions import CONSOLIDATION, GGO
from covidct.segment.slices2d import SliceOptions, segment_slice

# First file number of each of the 20 ma20-8bit patients. They were found where
# the Pearson correlation of consecutive slices drops to 0.08-0.55, against
# 0.65-0.99 inside a run, and each run was checked by eye to climb from the
# lung base to the apex.
# NOTE: files 1474 (0.34) and 1476 (0.54) were kept inside their runs by eye,
# so the runs from 1442 to 1485 are uncertain. The tuning/held-out split at
# 1247 is not, because the field of view changes there.
PATIENT_STARTS = (
    0, 159, 279, 397, 510, 626, 696, 789, 970, 1081,
    1247, 1258, 1376, 1442, 1475, 1477, 1486, 1510, 1565, 1587,
)  # fmt: skip
FIRST_HELD_OUT = PATIENT_STARTS[10]


@dataclass
class DiceTally:
    """Per-slice Dice values and pooled pixel counts of one comparison."""

    per_slice: list[float] = field(default_factory=list)
    overlap: int = 0
    total: int = 0

    def add(self, predicted: np.ndarray, reference: np.ndarray) -> None:
        """Add one slice; a slice empty in both masks counts as Dice 1."""
        overlap = int(np.count_nonzero(predicted & reference))
        total = int(np.count_nonzero(predicted)) + int(np.count_nonzero(reference))
        self.per_slice.append(1.0 if total == 0 else 2.0 * overlap / total)
        self.overlap += overlap
        self.total += total

    def row(self, name: str) -> str:
        """Format one Markdown table row: name, slices, mean Dice, global Dice."""
        mean = float(np.mean(self.per_slice)) if self.per_slice else float("nan")
        pooled = 2.0 * self.overlap / self.total if self.total else float("nan")
        return f"| {name} | {len(self.per_slice)} | {mean:.3f} | {pooled:.3f} |"


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _split_sides(lungs: np.ndarray) -> np.ndarray:
    """Label a two-lung mask: components left of the image middle 1, others 2."""
    labels, count = ndi.label(lungs)
    sides = np.zeros(lungs.shape, dtype=np.uint8)
    middle = lungs.shape[1] / 2.0
    for index in range(1, count + 1):
        component = labels == index
        side = 1 if np.nonzero(component)[1].mean() < middle else 2
        sides[component] = side
    return sides


def _run_ma20(item: tuple[Path, int]) -> dict[str, np.ndarray]:
    root, number = item
    name = f"{number:04d}.png"
    image = _read(root / "ct" / name)
    lungs = _read(root / "lungs" / name) > 0
    lesions = _read(root / "covid" / name) > 0
    predicted = segment_slice(image)
    with_reference = segment_slice(image, lungs=_split_sides(lungs))
    return {
        "lungs": predicted.lungs > 0,
        "lungs_ref": lungs,
        "lesions": predicted.lesions > 0,
        "lesions_gt_lungs": with_reference.lesions > 0,
        "lesions_ref": lesions,
    }


def _run_semiseg(item: tuple[Path, str, bool]) -> dict[str, np.ndarray]:
    root, stem, padded = item
    image = _read(root / "train-binary" / "Imgs" / f"{stem}.jpg")
    if image.ndim == 3:
        image = image[..., 0]
    classes = _read(root / "train-multiclass" / "GT" / f"{stem}.png")
    binary = _read(root / "train-binary" / "GT" / f"{stem}.png") > 0
    options = SliceOptions(pad_with_tissue=padded)
    predicted = segment_slice(image, options).lesions
    return {
        "lesions": predicted > 0,
        "lesions_ref": binary,
        "ggo": predicted == GGO,
        "ggo_ref": classes == 1,
        "consolidation": predicted == CONSOLIDATION,
        "consolidation_ref": classes == 2,
    }


def _check_data(data: Path) -> tuple[Path, Path]:
    ma20 = data / "ma20-8bit"
    semiseg = data / "covid-semiseg"
    for folder in (ma20 / "ct", ma20 / "lungs", ma20 / "covid", semiseg):
        if not folder.is_dir():
            sys.exit(
                f"data folder not found: {folder}. Pass --data with the folder "
                "that contains ma20-8bit/ and covid-semiseg/."
            )
    return ma20, semiseg


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data"),
        help="folder that contains ma20-8bit/ and covid-semiseg/",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="number of worker processes"
    )
    args = parser.parse_args()
    ma20, semiseg = _check_data(args.data)

    numbers = sorted(int(path.stem) for path in (ma20 / "ct").glob("*.png"))
    stems = sorted(
        (path.stem for path in (semiseg / "train-binary" / "Imgs").glob("*.jpg")),
        key=int,
    )
    tallies: dict[str, DiceTally] = {}

    def tally(name: str) -> DiceTally:
        return tallies.setdefault(name, DiceTally())

    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        items = [(ma20, number) for number in numbers]
        results = pool.map(_run_ma20, items, chunksize=16)
        for number, out in zip(numbers, results, strict=True):
            split = "held out 11-20" if number >= FIRST_HELD_OUT else "tuning 1-10"
            tally(f"ma20 lungs, {split}").add(out["lungs"], out["lungs_ref"])
            tally(f"ma20 lesions, {split}").add(out["lesions"], out["lesions_ref"])
            tally(f"ma20 lesions in GT lungs, {split}").add(
                out["lesions_gt_lungs"], out["lesions_ref"]
            )
        for padded in (False, True):
            label = "padded" if padded else "as is"
            items = [(semiseg, stem, padded) for stem in stems]
            for out in pool.map(_run_semiseg, items):
                for key in ("lesions", "ggo", "consolidation"):
                    tally(f"semiseg {key}, {label}").add(out[key], out[f"{key}_ref"])
    elapsed = time.perf_counter() - start

    print("| comparison | slices | mean per-slice Dice | global Dice |")
    print("|---|---|---|---|")
    for name in sorted(tallies):
        print(tallies[name].row(name))
    slices = len(numbers) + 2 * len(stems)
    print(f"\n{slices} slice runs in {elapsed:.0f} s with {args.workers} workers")


if __name__ == "__main__":
    main()
