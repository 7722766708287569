"""Accuracy, speed and memory of the CNN backend beside the threshold backend.

Figures, all on data the bundled networks never trained on:

- ma20-8bit test patients (4, 9, 12, 18, 20 of the patient table): lung and
  lesion Dice per class on the 256 x 256 grid;
- covid-semiseg (all 50 slices; the networks never saw this source): lesion,
  ground-glass opacity and consolidation Dice;
- COVID-CT-MD P002: AUC of the per-slice lesion area against the
  radiologists' slice labels; normal001: lesion volume in % of lung volume;
- the share of expert lesion pixels inside the predicted lung mask, and of a
  uniform 35 HU ball painted against the pleura of P002;
- the ensemble's time and peak memory on P002 (133 slices of 512 x 512), each
  measured in a fresh process.

Usage:
    .venv/bin/python -P benchmarks/cnn_segmentation.py [--data ../shared/data]
        [--model BUNDLE] [--skip-threshold]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from sklearn.metrics import roc_auc_score

from covidct.intake import load_study
from covidct.segment.cnn.bundle import load_bundle
from covidct.segment.cnn.data import LESION, LUNG, SliceSet, read_slice_folder
from covidct.segment.cnn.evaluate import evaluate_slices, predict_slice_masks
from covidct.segment.cnn.inference import segment_cnn
from covidct.segment.threshold import segment_threshold

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PATIENTS = (
    Path(__file__).resolve().parents[1]
    / "src"
    / "covidct"
    / "segment"
    / "cnn"
    / "splits"
    / "ma20-8bit.csv"
)

TIMING_SCRIPT = """
import json, resource, sys, time
from covidct.intake import load_study
from covidct.segment.cnn.bundle import load_bundle
from covidct.segment.cnn.inference import segment_cnn
volume = load_study(sys.argv[1])
bundle = load_bundle(None if sys.argv[2] == "-" else sys.argv[2])
start = time.perf_counter()
segment_cnn(volume, bundle)
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
print(json.dumps({"seconds": elapsed, "peak_gb": peak}))
"""


def slice_lesion_area(volume, segmentation) -> np.ndarray:
    """Lesion pixels per slice, ordered from superior to inferior."""
    z_positions = volume.origin[2] + np.arange(volume.shape[0]) * (
        volume.direction[2, 2] * volume.spacing[2]
    )
    order = np.argsort(-z_positions)
    return np.count_nonzero(segmentation.lesions, axis=(1, 2))[order]


def volume_figures(ct_md: Path, segment) -> dict[str, float]:
    p002 = load_study(ct_md / "P002")
    area = slice_lesion_area(p002, segment(p002))
    labels = np.load(ct_md / "Slice-level-labels-updated-1.npy")[1][: area.size]
    normal = load_study(ct_md / "normal001")
    segmentation = segment(normal)
    lung = np.count_nonzero(segmentation.lungs)
    return {
        "p002_slice_auc": float(roc_auc_score(labels, area)),
        "p002_positive_slices": int(labels.sum()),
        "normal001_lesion_percent": 100.0
        * np.count_nonzero(segmentation.lesions)
        / lung,
    }


def timing(ct_md: Path, model: str) -> dict[str, float]:
    runs = []
    for _ in range(2):
        output = subprocess.run(
            [sys.executable, "-c", TIMING_SCRIPT, str(ct_md / "P002"), model],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    return {
        "seconds": min(r["seconds"] for r in runs),
        "peak_gb": max(r["peak_gb"] for r in runs),
    }


def lesions_inside_lung(data: SliceSet, segmenter) -> dict[str, float]:
    """Share of the expert lesion pixels that the predicted lung mask contains.

    "Peripheral" lesion pixels lie within 8 pixels of the 256 x 256 grid of
    the expert lung border, about 1 cm for a 350 mm field of view.
    """
    lungs, _ = predict_slice_masks(data, segmenter)
    lesion = data.targets == LESION
    reference = np.isin(data.targets, (LUNG, LESION))
    depth = np.stack([ndi.distance_transform_edt(mask) for mask in reference])
    peripheral = lesion & (depth <= 8)
    return {
        "lesion_in_lung": float(lungs[lesion].mean()),
        "peripheral_lesion_in_lung": float(lungs[peripheral].mean()),
    }


def painted_ball_inside(ct_md: Path, segment) -> float:
    """Share of a uniform 35 HU ball against the pleura that ends up as lung.

    The ball (10 mm radius) is centred on the lateral border of the right lung
    of P002, on its 71st slice, where the threshold backend finds that border.
    Only its voxels that were lung before painting count.
    """
    volume = load_study(ct_md / "P002")
    lungs = segment_threshold(volume).lungs
    z0 = 70
    rows = np.nonzero((lungs[z0] == 1).any(axis=1))[0]
    y0 = int(rows.mean())
    x0 = int(np.nonzero(lungs[z0, y0] == 1)[0].min())
    zz, yy, xx = np.ogrid[: lungs.shape[0], : lungs.shape[1], : lungs.shape[2]]
    sx, sy, sz = volume.spacing
    ball = ((zz - z0) * sz) ** 2 + ((yy - y0) * sy) ** 2 + ((xx - x0) * sx) ** 2
    opacity = (ball <= 10.0**2) & (lungs == 1)
    volume.hu = volume.hu.copy()
    volume.hu[opacity] = 35
    painted = segment(volume).lungs
    return float(np.count_nonzero(painted[opacity]) / np.count_nonzero(opacity))


def row(name: str, figures: dict, keys: tuple[str, ...]) -> str:
    cells = []
    for key in keys:
        value = figures["classes"].get(key, {}).get("dice")
        cells.append("-" if value is None else f"{value:.3f}")
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, help="bundle folder (default: bundled)")
    parser.add_argument("--skip-threshold", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    for folder in ("ma20-8bit", "covid-semiseg", "covid-ct-md"):
        if not (args.data / folder).is_dir():
            print(f"data not found: {args.data / folder}; pass --data", file=sys.stderr)
            return 2
    bundle = load_bundle(args.model)
    started = time.perf_counter()
    results: dict[str, dict] = {"cnn": {}, "threshold": {}}

    ma20 = read_slice_folder(args.data / "ma20-8bit", PATIENTS, normalized=True)
    test = ma20.select("test")
    semiseg = read_slice_folder(args.data / "covid-semiseg" / "train-multiclass")
    segmenters = {"cnn": bundle}
    if not args.skip_threshold:
        segmenters["threshold"] = "threshold"
    for name, segmenter in segmenters.items():
        results[name]["ma20_test"] = evaluate_slices(test, segmenter)
        results[name]["ma20_inside"] = lesions_inside_lung(test, segmenter)
        results[name]["semiseg"] = evaluate_slices(semiseg, segmenter)
    results["cnn"]["volumes"] = volume_figures(
        args.data / "covid-ct-md", lambda v: segment_cnn(v, bundle)
    )
    if not args.skip_threshold:
        results["threshold"]["volumes"] = volume_figures(
            args.data / "covid-ct-md", segment_threshold
        )
    results["cnn"]["painted_ball_inside"] = painted_ball_inside(
        args.data / "covid-ct-md", lambda v: segment_cnn(v, bundle)
    )
    if not args.skip_threshold:
        results["threshold"]["painted_ball_inside"] = painted_ball_inside(
            args.data / "covid-ct-md", segment_threshold
        )
    results["cnn"]["timing"] = timing(
        args.data / "covid-ct-md", "-" if args.model is None else str(args.model)
    )

    print(f"ma20-8bit test patients ({len(test)} slices), pooled Dice")
    print("| backend | lung | lesion |\n|---|---:|---:|")
    for name in segmenters:
        print(row(name, results[name]["ma20_test"], ("lung", "lesion")))
    print("\nShare of the expert lesion pixels inside the predicted lung mask")
    print("| backend | all lesion | peripheral lesion |\n|---|---:|---:|")
    for name in segmenters:
        inside = results[name]["ma20_inside"]
        print(
            f"| {name} | {inside['lesion_in_lung']:.3f} | "
            f"{inside['peripheral_lesion_in_lung']:.3f} |"
        )
    print(f"\ncovid-semiseg ({len(semiseg)} slices, never trained on), pooled Dice")
    print("| backend | lesion | GGO | consolidation |\n|---|---:|---:|---:|")
    for name in segmenters:
        print(row(name, results[name]["semiseg"], ("lesion", "ggo", "consolidation")))
    print(
        "\n| backend | P002 slice AUC | normal001 lesion % of lung |\n|---|---:|---:|"
    )
    for name in segmenters:
        figures = results[name]["volumes"]
        print(
            f"| {name} | {figures['p002_slice_auc']:.3f} | "
            f"{figures['normal001_lesion_percent']:.2f} |"
        )
    print("\nShare of a uniform 35 HU ball painted on the pleura inside the lungs")
    for name in segmenters:
        print(f"- {name}: {results[name]['painted_ball_inside']:.3f}")
    timing_figures = results["cnn"]["timing"]
    print(
        f"\nEnsemble on P002 (133 x 512 x 512), best of 2 fresh processes: "
        f"{timing_figures['seconds']:.1f} s, "
        f"peak RSS {timing_figures['peak_gb']:.2f} GB"
    )
    print(f"({time.perf_counter() - started:.0f} s in all; bundle {bundle.path})")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
