"""Throughput of ``covidct batch`` and how study time grows with slice count.

Part 1 copies a real study under several ids and times one batch with 1
and with 2 local workers. It then times one batch on a Dask LocalCluster
bound to 127.0.0.1 with 2 single-threaded workers. Each batch writes into a
fresh output folder.
Part 2 resamples the study along z to thinner slice spacing, writes each
version as NIfTI into a temporary folder, and times one study per version.
Radiomics are off unless ``--radiomics`` is given. Prints Markdown tables
for ``docs/benchmarks.md``.

Usage:
    .venv/bin/python -P benchmarks/cohort.py [STUDY] [--copies N]
        [--spacings 2,1,0.5] [--radiomics]

STUDY defaults to ../shared/data/covid-ct-md/P002.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from covidct.cohort import BatchOptions, discover_studies, run_batch
from covidct.intake import load_study

DEFAULT_STUDY = (
    Path(__file__).resolve().parents[1].parent / "shared/data/covid-ct-md/P002"
)


def time_batch(source: Path, out: Path, options: BatchOptions) -> tuple[float, int]:
    """Run one batch and return its wall time in seconds and the studies done."""
    tasks = discover_studies(source)
    started = time.perf_counter()
    summary = run_batch(tasks, out, options)
    seconds = time.perf_counter() - started
    if summary.failed:
        raise RuntimeError(f"studies failed: {summary.failed}; see {out}")
    return seconds, summary.done


def throughput(study: Path, root: Path, copies: int, radiomics: bool) -> list[str]:
    source = root / "copies"
    for index in range(copies):
        shutil.copytree(study, source / f"s{index + 1:02d}")
    lines = [
        "| execution | workers | studies | wall time (s) | studies per minute |",
        "|---|---:|---:|---:|---:|",
    ]
    runs = [("local processes", 1, None), ("local processes", 2, None)]
    for name, workers, scheduler in runs + [("Dask LocalCluster", 2, "dask")]:
        options = BatchOptions(workers=workers, radiomics=radiomics)
        out = root / f"out-{name.split()[0]}-{workers}"
        if scheduler is None:
            seconds, done = time_batch(source, out, options)
        else:
            seconds, done = _time_on_local_cluster(source, out, options, workers)
        lines.append(
            f"| {name} | {workers} | {done} | {seconds:.1f} | "
            f"{60 * done / seconds:.2f} |"
        )
        print(lines[-1], flush=True)
    return lines


def _time_on_local_cluster(
    source: Path, out: Path, options: BatchOptions, workers: int
) -> tuple[float, int]:
    from distributed import LocalCluster

    # The cluster starts before the clock, as a user's cluster would be
    # running already.
    with LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        options.scheduler = cluster.scheduler_address
        return time_batch(source, out, options)


def slice_scaling(
    study: Path, root: Path, spacings: list[float], radiomics: bool
) -> list[str]:
    volume = load_study(study)
    image = volume.to_sitk()
    lines = [
        "| slice spacing (mm) | slices | voxels (millions) | wall time (s) |",
        "|---:|---:|---:|---:|",
    ]
    for spacing in spacings:
        folder = root / f"spacing-{spacing:g}mm"
        folder.mkdir()
        resampled = _resample_z(image, spacing)
        sitk.WriteImage(resampled, str(folder / f"z{spacing:g}.nii.gz"))
        seconds, _ = time_batch(
            folder, root / f"out-z{spacing:g}", BatchOptions(radiomics=radiomics)
        )
        size = resampled.GetSize()
        lines.append(
            f"| {spacing:g} | {size[2]} | {np.prod(size) / 1e6:.0f} | {seconds:.1f} |"
        )
        print(lines[-1], flush=True)
    return lines


def _resample_z(image: sitk.Image, spacing_z: float) -> sitk.Image:
    """Resample linearly along z to ``spacing_z`` mm, keeping x and y."""
    old_spacing = image.GetSpacing()
    old_size = image.GetSize()
    new_spacing = (old_spacing[0], old_spacing[1], spacing_z)
    extent = (old_size[2] - 1) * old_spacing[2]
    new_size = [old_size[0], old_size[1], int(round(extent / spacing_z)) + 1]
    return sitk.Resample(
        image,
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        new_spacing,
        image.GetDirection(),
        -1024,
        image.GetPixelID(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, nargs="?", default=DEFAULT_STUDY)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--spacings", default="2,1,0.5")
    parser.add_argument("--radiomics", action="store_true")
    args = parser.parse_args()
    spacings = [float(value) for value in args.spacings.split(",")]

    with tempfile.TemporaryDirectory(prefix="covidct-bench-cohort-") as temporary:
        root = Path(temporary)
        print(f"Date: {date.today()}; {platform.platform()}; {args.study}")
        table = throughput(args.study, root, args.copies, args.radiomics)
        scaling = slice_scaling(args.study, root, spacings, args.radiomics)
    print("\n".join(["", *table, "", *scaling]))


if __name__ == "__main__":
    main()
