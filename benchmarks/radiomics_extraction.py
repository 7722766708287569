"""Time radiomics extraction on the real P002 series, per region and in total.

Usage, from the repository root:

    .venv/bin/python benchmarks/radiomics_extraction.py [--workers 2] [--plain-lung]

The masks come from HU thresholds (lungs below -400 HU, lesions between -750 and
-300 HU inside them, a box for the heart); they exercise the extraction and are
not a segmentation. ``--plain-lung`` also times one plain
``RadiomicsFeatureExtractor.execute`` call on the left lung, which takes minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from covidct.biomarkers.radiomics import (
    REGIONS,
    RadiomicsSettings,
    extract_radiomics,
    region_masks,
)
from covidct.intake.volume import CTVolume, Provenance
from covidct.segment.result import Segmentation

P002 = Path(__file__).resolve().parents[1].parent / "shared/data/covid-ct-md/P002"


def read_series(folder: Path) -> CTVolume:
    """Read a DICOM series folder into a CTVolume in HU."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = sitk.Cast(reader.Execute(), sitk.sitkInt16)
    return CTVolume.from_sitk(image, Provenance(source=str(folder), kind="dicom"))


def threshold_masks(hu: np.ndarray) -> Segmentation:
    """Make rough lung, lesion and heart masks from HU thresholds."""
    body = np.stack([ndimage.binary_fill_holes(s) for s in hu > -500])
    air, _ = ndimage.label((hu < -400) & body)
    sizes = np.bincount(air.ravel())
    sizes[0] = 0
    lungs_mask = np.isin(air, np.argsort(sizes)[-2:])
    columns = np.arange(hu.shape[2])[None, None, :]
    middle = hu.shape[2] // 2
    lungs = np.zeros(hu.shape, np.uint8)
    lungs[lungs_mask & (columns < middle)] = 1  # low x is the patient's right
    lungs[lungs_mask & (columns >= middle)] = 2
    lesions = np.zeros(hu.shape, np.uint8)
    lesions[(lungs > 0) & (hu > -750) & (hu < -300)] = 1
    heart = np.zeros(hu.shape, bool)
    z = hu.shape[0] * 2 // 3
    y, x = hu.shape[1] // 2, hu.shape[2] // 2
    heart[z - 15 : z + 15, y - 30 : y + 30, x - 40 : x + 20] = True
    heart &= lungs == 0
    return Segmentation(lungs=lungs, heart=heart, lesions=lesions, method="threshold")


def subset(
    segmentation: Segmentation, side: int | None, lesions: bool, heart: bool
) -> Segmentation:
    """Keep one lung (1 right, 2 left, None for none), its lesions and the heart."""
    in_side = segmentation.lungs == side
    return Segmentation(
        lungs=np.where(in_side, segmentation.lungs, 0).astype(np.uint8),
        heart=segmentation.heart & heart,
        lesions=np.where(in_side & lesions, segmentation.lesions, 0).astype(np.uint8),
        method="subset",
    )


def time_extraction(
    volume: CTVolume, segmentation: Segmentation, workers: int
) -> float:
    start = time.perf_counter()
    extract_radiomics(volume, segmentation, workers=workers)
    return time.perf_counter() - start


def peak_memory_mib() -> float:
    """Return the peak resident memory of this process in MiB (Linux units)."""
    # NOTE: worker processes are not counted. RUSAGE_CHILDREN would report the
    # parent's size, because a spawned child keeps the peak it had before exec.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=2, help="processes for the total run"
    )
    parser.add_argument(
        "--plain-lung",
        action="store_true",
        help="also time plain PyRadiomics on the left lung (minutes)",
    )
    args = parser.parse_args()

    volume = read_series(P002)
    segmentation = threshold_masks(volume.hu)
    masks = region_masks(segmentation)
    print(f"P002 {volume.shape} voxels, spacing {volume.spacing} mm")
    print(f"machine: {platform.processor() or platform.machine()}, ", end="")
    print(f"{os.cpu_count()} CPUs visible")
    print()
    # A lesion region is resampled together with its lung, so its time is the
    # difference between the lung with and without its lesions.
    seconds = {
        "heart": time_extraction(volume, subset(segmentation, None, False, True), 1)
    }
    for side, name in ((2, "left"), (1, "right")):
        lung = time_extraction(volume, subset(segmentation, side, False, False), 1)
        both = time_extraction(volume, subset(segmentation, side, True, False), 1)
        seconds[f"lung_{name}"] = lung
        seconds[f"disease_{name}"] = both - lung
    print(f"{'region':<14} {'CT voxels':>10} {'seconds (1 worker)':>19}")
    for region in REGIONS:
        voxels = int(masks[region].sum())
        print(f"{region:<14} {voxels:>10} {seconds[region]:>19.1f}")
    for workers in sorted({1, args.workers}):
        total = time_extraction(volume, segmentation, workers)
        print(f"{'all 5 regions':<14} {'':>10} {total:>12.1f} ({workers} worker(s))")
    print(f"peak resident memory of the main process: {peak_memory_mib():.0f} MiB")

    if args.plain_lung:
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        settings = RadiomicsSettings().pyradiomics_settings()
        extractor = RadiomicsFeatureExtractor(**settings)
        mask = volume.to_sitk(masks["lung_left"].astype(np.uint8))
        start = time.perf_counter()
        extractor.execute(volume.to_sitk(), mask)
        plain = time.perf_counter() - start
        print(f"plain PyRadiomics, lung_left: {plain:.1f} s")


if __name__ == "__main__":
    main()
