"""Comparison of a segmenter's masks with reference masks, class by class.

Three kinds of segmenter are compared: the threshold backend, a network
ensemble (a bundle folder), and a folder of label maps written earlier (for
instance by ``covidct batch``). The reference is a folder of 2D slices with
masks or of NIfTI image and label-map pairs, as ``covidct
train-segmentation`` reads them.

On 2D slices every figure is computed on the 256 x 256 input grid, with
distances in pixels of that grid. On volumes it is computed on the CT grid,
with distances in mm.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from tqdm import tqdm

from covidct.errors import InputError
from covidct.intake.readers import load_study
from covidct.segment.cnn.bundle import ModelBundle
from covidct.segment.cnn.data import LESION, LUNG, NOT_LESION, SliceSet
from covidct.segment.cnn.inference import (
    decide_labels,
    ensemble_probabilities,
    segment_cnn,
)
from covidct.segment.cnn.metrics import ClassTally
from covidct.segment.lesions import LesionOptions
from covidct.segment.result import CONSOLIDATION, GGO
from covidct.segment.slices2d import calibrate_slice, segment_slice, to_pseudo_hu
from covidct.segment.threshold import segment_threshold

__all__ = ["evaluate_slices", "evaluate_volumes", "predict_slice_masks"]

logger = logging.getLogger(__name__)

CLASSES = ("lung", "lesion", "ggo", "consolidation")


def _patient_runs(data: SliceSet) -> list[np.ndarray]:
    """Split slice indices into runs of consecutive slices of one patient."""
    runs: list[list[int]] = []
    for index, patient in enumerate(data.patients):
        if runs and data.patients[runs[-1][-1]] == patient:
            runs[-1].append(index)
        else:
            runs.append([index])
    return [np.array(run) for run in runs]


def _split_by_grey_level(original: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Call lesion pixels of an 8-bit slice GGO or consolidation via pseudo-HU."""
    classes = np.zeros(lesion.shape, dtype=np.uint8)
    calibration = calibrate_slice(original)
    if not calibration.valid:
        classes[lesion] = GGO
        return classes
    pseudo_hu = ndi.gaussian_filter(to_pseudo_hu(original, calibration), 1.0)
    classes[lesion] = GGO
    classes[lesion & (pseudo_hu > LesionOptions().consolidation_min_hu)] = CONSOLIDATION
    return classes


def predict_slice_masks(
    data: SliceSet, segmenter: ModelBundle | str
) -> tuple[np.ndarray, np.ndarray]:
    """Return lung masks and lesion classes (0, GGO, consolidation) per slice."""
    count = len(data)
    lungs = np.zeros(data.targets.shape, dtype=bool)
    classes = np.zeros(data.targets.shape, dtype=np.uint8)
    if segmenter == "threshold":
        if data.originals is None:
            raise ValueError("the threshold rule on slices needs the source images")
        for index in tqdm(range(count), desc="threshold rule", leave=False):
            masks = segment_slice(data.originals[index])
            lungs[index] = masks.lungs > 0
            classes[index] = masks.lesions
        return lungs, classes
    assert isinstance(segmenter, ModelBundle)
    for run in tqdm(_patient_runs(data), desc="ensemble", leave=False):
        probabilities = ensemble_probabilities(data.images[run], segmenter)
        labels = np.stack(
            [decide_labels(p, segmenter.lesion_threshold) for p in probabilities]
        )
        lungs[run] = labels > 0
        for offset, index in enumerate(run):
            lesion = labels[offset] == LESION
            if data.originals is not None:
                classes[index] = _split_by_grey_level(data.originals[index], lesion)
            else:
                classes[index][lesion] = GGO
    return lungs, classes


def evaluate_slices(data: SliceSet, segmenter: ModelBundle | str) -> dict[str, Any]:
    """Compare a segmenter with the reference masks of 2D slices.

    Args:
        data: Reference slices.
        segmenter: A bundle, or "threshold" for the threshold backend's 2D
            adaptation.

    Returns:
        Per class (lung where the lungs are labelled, lesion, and GGO and
        consolidation where the masks tell them apart) the pooled Dice, mean
        slice Dice, median HD95 in pixels and volume error in percent.
    """
    lungs, classes = predict_slice_masks(data, segmenter)
    tallies = {name: ClassTally() for name in CLASSES}
    spacing = (1.0, 1.0)
    for index in range(len(data)):
        target = data.targets[index]
        if not (target == NOT_LESION).any():
            tallies["lung"].add(lungs[index], np.isin(target, (LUNG, LESION)), spacing)
        tallies["lesion"].add(classes[index] > 0, target == LESION, spacing)
        if data.lesion_classes is not None:
            reference = data.lesion_classes[index]
            tallies["ggo"].add(classes[index] == GGO, reference == 1, spacing)
            tallies["consolidation"].add(
                classes[index] == CONSOLIDATION, reference == 2, spacing
            )
    return {
        "slices": len(data),
        "patients": len(set(data.patients)),
        "unit": "pixels of the 256 x 256 input grid",
        "classes": {
            name: tally.summary()
            for name, tally in tallies.items()
            if tally.truth or tally.predicted
        },
    }


def _read_labels(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            "the label map could not be read",
            path=path,
            hint="Give a NIfTI label map with covidct's label values.",
        ) from exc


def _masks_from_labels(labels: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "lung": np.isin(labels, (1, 2, 4, 5)),
        "lesion": np.isin(labels, (4, 5)),
        "ggo": labels == 4,
        "consolidation": labels == 5,
    }


def evaluate_volumes(root: Path, segmenter: ModelBundle | str | Path) -> dict[str, Any]:
    """Compare a segmenter with the label maps of NIfTI image and label pairs.

    Args:
        root: Folder with ``images/`` and ``labels/`` as in training.
        segmenter: A bundle, "threshold", or a folder of predicted label maps
            named as the images (or ``NAME/segmentation.nii.gz``).

    Returns:
        Per class the pooled Dice, mean volume Dice, median HD95 in mm and
        volume error in percent.
    """
    image_dir = root / "images"
    label_dir = root / "labels"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise InputError(
            "no images/ and labels/ sub-folders",
            path=root,
            hint="Give the folder of image and label-map pairs.",
        )
    tallies = {name: ClassTally() for name in CLASSES}
    files = sorted(
        p for p in image_dir.iterdir() if p.name.endswith((".nii", ".nii.gz"))
    )
    for path in tqdm(files, desc="volumes", leave=False):
        reference = _read_labels(label_dir / path.name)
        truth = sitk.GetArrayFromImage(reference)
        if isinstance(segmenter, Path):
            name = path.name.split(".nii")[0]
            candidates = [
                segmenter / path.name,
                segmenter / name / "segmentation.nii.gz",
            ]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise InputError(
                    f"no predicted label map for {path.name}",
                    path=segmenter,
                    hint=f"Expected {candidates[0].name} or "
                    f"{name}/segmentation.nii.gz.",
                )
            predicted = sitk.GetArrayFromImage(_read_labels(found))
        else:
            volume = load_study(path)
            if segmenter == "threshold":
                segmentation = segment_threshold(volume)
            else:
                assert isinstance(segmenter, ModelBundle)
                segmentation = segment_cnn(volume, segmenter)
            predicted = segmentation.label_map()
        if predicted.shape != truth.shape:
            raise InputError(
                f"the predicted label map has shape {predicted.shape}, the "
                f"reference {truth.shape}",
                path=path,
                hint="Compare label maps on the same grid.",
            )
        spacing = tuple(float(s) for s in reversed(reference.GetSpacing()))
        predicted_masks = _masks_from_labels(predicted)
        truth_masks = _masks_from_labels(truth)
        for name in CLASSES:
            tallies[name].add(predicted_masks[name], truth_masks[name], spacing)
    return {
        "volumes": len(files),
        "unit": "mm",
        "classes": {
            name: tally.summary()
            for name, tally in tallies.items()
            if tally.truth or tally.predicted
        },
    }
