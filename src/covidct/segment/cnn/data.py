"""Training data of the segmentation networks: 2D slice folders and NIfTI pairs.

Every source becomes a ``SliceSet``: normalised 256 x 256 slices with one
target code per pixel, the patient each slice belongs to, and the slices
above and below it for members that see neighbouring slices.

Target codes:

- 0 background, 1 lung without lesion, 2 lesion (ground-glass opacity or
  consolidation; lesions are part of the lung);
- 3 "background or lung", for sources that label lesions but not lungs (the
  loss then only requires that the pixel is not a lesion).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import SimpleITK as sitk
from PIL import Image

from covidct.errors import InputError
from covidct.segment.cnn.normalization import (
    INPUT_SIZE,
    SquareFrame,
    hu_slices_to_inputs,
    normalize_8bit,
)
from covidct.segment.orientation import Reorientation

__all__ = [
    "BACKGROUND",
    "LESION",
    "LUNG",
    "NOT_LESION",
    "SliceSet",
    "read_slice_folder",
    "read_volume_folder",
]

logger = logging.getLogger(__name__)

BACKGROUND = 0
LUNG = 1
LESION = 2
NOT_LESION = 3

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Folder layouts of 2D slice sets: (image folder, lesion mask folder, lung mask
# folder or None). The first is the layout of the COVID-19-CT-Seg 8-bit
# export, the second that of COVID-SemiSeg, the third the generic one.
SLICE_LAYOUTS = (
    ("ct", "covid", "lungs"),
    ("Imgs", "GT", None),
    ("images", "masks", "lungs"),
)

# Label values of the NIfTI label maps accepted for training: the map that
# `covidct analyze` writes (so users can correct it and train on it).
VOLUME_LUNG_LABELS = (1, 2)
VOLUME_LESION_LABELS = (4, 5)
VOLUME_ALLOWED_LABELS = frozenset(range(6))


@dataclass
class SliceSet:
    """Normalised slices with per-pixel target codes.

    Attributes:
        images: uint8 ``(n, INPUT_SIZE, INPUT_SIZE)``, already normalised.
        targets: uint8 codes (see the module docstring), same shape.
        names: Source file (and slice) of each slice.
        patients: Patient of each slice; splits never cut a patient.
        splits: "train", "validation", "test" or "" (not assigned) per slice.
        previous: Index of the slice below in the same patient (itself at
            the end of a run).
        following: Index of the slice above in the same patient.
        warnings: Corrections made while reading (binarised masks ...).
        lesion_classes: uint8 0 none, 1 ground-glass opacity, 2 consolidation
            per pixel, for sources whose masks tell the two apart; else None.
        originals: The source slices resized to the input grid before
            normalisation (uint8), for rules that read grey levels; None for
            slices cut from HU volumes.
    """

    images: np.ndarray
    targets: np.ndarray
    names: list[str]
    patients: list[str]
    splits: list[str]
    previous: np.ndarray
    following: np.ndarray
    warnings: list[str] = field(default_factory=list)
    lesion_classes: np.ndarray | None = None
    originals: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: Sequence[int]) -> SliceSet:
        """Return the chosen slices, with neighbours re-indexed inside the subset."""
        rows = np.asarray(indices, dtype=np.int64)
        position = {int(old): new for new, old in enumerate(rows)}
        previous = np.array(
            [position.get(int(self.previous[i]), n) for n, i in enumerate(rows)]
        )
        following = np.array(
            [position.get(int(self.following[i]), n) for n, i in enumerate(rows)]
        )
        return SliceSet(
            images=self.images[rows],
            targets=self.targets[rows],
            names=[self.names[i] for i in rows],
            patients=[self.patients[i] for i in rows],
            splits=[self.splits[i] for i in rows],
            previous=previous.astype(np.int64),
            following=following.astype(np.int64),
            warnings=list(self.warnings),
            lesion_classes=None
            if self.lesion_classes is None
            else self.lesion_classes[rows],
            originals=None if self.originals is None else self.originals[rows],
        )

    def select(self, split: str) -> SliceSet:
        """Return the slices assigned to ``split``."""
        return self.subset([i for i, s in enumerate(self.splits) if s == split])

    def stack(self, index: int, context_slices: int) -> np.ndarray:
        """Return slice ``index`` with ``context_slices`` neighbours on each side.

        The result is uint8 ``(1 + 2 * context_slices, H, W)``, ordered from
        the lowest slice to the highest.
        """
        below = [index]
        above = [index]
        for _ in range(context_slices):
            below.append(int(self.previous[below[-1]]))
            above.append(int(self.following[above[-1]]))
        order = below[:0:-1] + [index] + above[1:]
        return self.images[order]

    @staticmethod
    def concatenate(sets: Sequence[SliceSet]) -> SliceSet:
        """Join several sets into one, keeping each set's neighbour links."""
        offset = 0
        previous = []
        following = []
        for part in sets:
            previous.append(part.previous + offset)
            following.append(part.following + offset)
            offset += len(part)
        return SliceSet(
            images=np.concatenate([s.images for s in sets]),
            targets=np.concatenate([s.targets for s in sets]),
            names=[n for s in sets for n in s.names],
            patients=[p for s in sets for p in s.patients],
            splits=[x for s in sets for x in s.splits],
            previous=np.concatenate(previous),
            following=np.concatenate(following),
            warnings=[w for s in sets for w in s.warnings],
        )


def _neighbours(patients: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Link each slice to the one before and after it within its patient's run."""
    count = len(patients)
    previous = np.arange(count)
    following = np.arange(count)
    for index in range(1, count):
        if patients[index] == patients[index - 1]:
            previous[index] = index - 1
            following[index - 1] = index
    return previous, following


def _find_layout(root: Path) -> tuple[Path, Path, Path | None]:
    for images, lesions, lungs in SLICE_LAYOUTS:
        if (root / images).is_dir() and (root / lesions).is_dir():
            lung_dir = root / lungs if lungs and (root / lungs).is_dir() else None
            return root / images, root / lesions, lung_dir
    layouts = "; ".join(
        f"{i}/ and {m}/" + (f" (optionally {lu}/)" if lu else "")
        for i, m, lu in SLICE_LAYOUTS
    )
    raise InputError(
        "no slice images and masks found",
        path=root,
        hint=f"Put the images and masks in sub-folders named {layouts}, with the "
        "same file names (the mask may end in .png where the image is .jpg).",
    )


def _read_grey(path: Path) -> np.ndarray:
    """Read a grey-level image; palette images keep their indices (class labels)."""
    try:
        with Image.open(path) as image:
            if image.mode in ("1", "L", "P", "I", "I;16", "F"):
                return np.array(image)
            return np.array(image.convert("L"))
    except (OSError, ValueError) as exc:
        raise InputError(
            f"the image could not be read: {exc}",
            path=path,
            hint="Check that the file is a complete PNG, JPEG, TIFF or BMP image.",
        ) from exc


def _mask_path(folder: Path, image: Path) -> Path:
    for candidate in (folder / image.name, folder / (image.stem + ".png")):
        if candidate.is_file():
            return candidate
    raise InputError(
        f"no mask for the image {image.name}",
        path=folder,
        hint=f"Add {image.stem}.png to {folder} or remove the image.",
    )


def _binarize_mask(
    mask: np.ndarray, path: Path, image_shape: tuple[int, ...], notes: set[str]
) -> np.ndarray:
    """Check a 2D mask against its image and return it as booleans."""
    if mask.shape != image_shape:
        raise InputError(
            f"the mask is {mask.shape[1]} x {mask.shape[0]} pixels but its image is "
            f"{image_shape[1]} x {image_shape[0]}",
            path=path,
            hint="Masks must lie on their image's pixel grid; resample the mask "
            "onto the image, or fix the pairing of the files.",
        )
    if np.issubdtype(mask.dtype, np.floating):
        notes.add(
            "masks with floating-point values were binarised at half their maximum"
        )
        top = float(mask.max())
        return mask > top / 2 if top > 0 else np.zeros(mask.shape, dtype=bool)
    if mask.max() > 1:
        notes.add(
            "masks with values above 1 (such as 255) were binarised: every "
            "value above 0 is foreground"
        )
    return mask > 0


def read_slice_folder(
    root: Path,
    patients_csv: Path | None = None,
    normalized: bool = False,
) -> SliceSet:
    """Read a folder of 2D slices with lesion masks and, optionally, lung masks.

    Args:
        root: Folder in one of ``SLICE_LAYOUTS``.
        patients_csv: CSV with columns ``file`` and ``patient`` and, optionally,
            ``split`` (train, validation or test). Without it, each file name up
            to its last ``_`` names the patient, and a file name without ``_``
            is a patient of its own.
        normalized: True when the images already went through the networks'
            normalisation (the ``ma20-8bit`` export); otherwise each image is
            resized, min-max scaled and equalised here.

    Raises:
        InputError: Missing folders, unreadable images, masks on another grid,
            or a patient file that does not match the images.
    """
    if not root.is_dir():
        raise InputError(
            "folder not found",
            path=root,
            hint="Check the path of the slice folder.",
        )
    image_dir, lesion_dir, lung_dir = _find_layout(root)
    files = sorted(
        (p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
        key=_natural_key,
    )
    if not files:
        raise InputError(
            "the image folder contains no PNG, JPEG, TIFF or BMP files",
            path=image_dir,
            hint="Give a folder with slice images and masks.",
        )
    assignment = _read_patients(patients_csv, files) if patients_csv else None
    notes: set[str] = set()
    count = len(files)
    images = np.empty((count, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    targets = np.empty((count, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    classes = np.zeros((count, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    originals = np.empty((count, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    patients: list[str] = []
    splits: list[str] = []
    for index, path in enumerate(files):
        image = _read_grey(path)
        lesion_path = _mask_path(lesion_dir, path)
        raw_mask = _read_grey(lesion_path)
        lesion = _binarize_mask(raw_mask, lesion_path, image.shape, notes)
        if np.issubdtype(raw_mask.dtype, np.integer) and raw_mask.max() <= 2:
            classes[index] = cv2.resize(
                raw_mask.astype(np.uint8),
                (INPUT_SIZE, INPUT_SIZE),
                interpolation=cv2.INTER_NEAREST,
            )
        originals[index] = np.clip(
            cv2.resize(
                image.astype(np.float32),
                (INPUT_SIZE, INPUT_SIZE),
                interpolation=cv2.INTER_CUBIC,
            ),
            0,
            255,
        ).astype(np.uint8)
        if lung_dir is not None:
            lung_path = _mask_path(lung_dir, path)
            lung = _binarize_mask(_read_grey(lung_path), lung_path, image.shape, notes)
            target = np.where(lung, LUNG, BACKGROUND).astype(np.uint8)
        else:
            target = np.full(image.shape, NOT_LESION, dtype=np.uint8)
        target[lesion] = LESION
        if image.shape != (INPUT_SIZE, INPUT_SIZE) or not normalized:
            image = normalize_8bit(image)
        images[index] = image
        targets[index] = cv2.resize(
            target, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_NEAREST
        )
        if assignment is not None:
            patient, split = assignment[path.name]
        else:
            patient, split = (path.stem.rsplit("_", 1)[0], "")
        patients.append(patient)
        splits.append(split)

    if assignment is None and len(set(patients)) == count:
        notes.add(
            "no patient file was given and the file names carry no patient "
            "prefix, so each slice counts as its own patient; give --patients "
            "when slices share patients"
        )
    warnings = sorted(notes)
    for warning in warnings:
        logger.warning("%s: %s", root, warning)
    # Masks with values 0, 1 and 2 tell ground-glass opacity (1) from
    # consolidation (2); 0/1 and 0/255 masks mark lesions only.
    multiclass = bool((classes == 2).any())
    previous, following = _neighbours(patients)
    return SliceSet(
        images=images,
        targets=targets,
        names=[p.name for p in files],
        patients=patients,
        splits=splits,
        previous=previous,
        following=following,
        warnings=warnings,
        lesion_classes=classes if multiclass else None,
        originals=originals,
    )


def _natural_key(path: Path) -> tuple[int, str]:
    stem = path.stem
    return (int(stem), "") if stem.isdigit() else (1 << 62, stem)


def _read_patients(path: Path, files: list[Path]) -> dict[str, tuple[str, str]]:
    """Read the file-to-patient table and check that it covers every image."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise InputError(
            f"the patient file could not be read: {exc.strerror}",
            path=path,
            hint="Give a CSV with columns file,patient[,split].",
        ) from exc
    if not rows or not {"file", "patient"} <= set(rows[0]):
        raise InputError(
            "the patient file has no 'file' and 'patient' columns",
            path=path,
            hint="Give a CSV with columns file,patient[,split].",
        )
    table: dict[str, tuple[str, str]] = {}
    patient_split: dict[str, str] = {}
    for row in rows:
        name = row["file"].strip()
        patient = row["patient"].strip()
        split = (row.get("split") or "").strip()
        if split not in ("", "train", "validation", "test"):
            raise InputError(
                f"unknown split {split!r} for {name}",
                path=path,
                hint="Use train, validation, test or leave the column empty.",
            )
        if name in table:
            raise InputError(
                f"the file {name} has more than one row",
                path=path,
                hint="Keep one row per image file.",
            )
        if patient_split.setdefault(patient, split) != split:
            first = patient_split[patient] or "none"
            raise InputError(
                f"patient {patient} is in two splits ({first} and "
                f"{split or 'none'}), for example at {name}",
                path=path,
                hint="Give every slice of a patient the same split.",
            )
        table[name] = (patient, split)
    missing = [f.name for f in files if f.name not in table]
    if missing:
        raise InputError(
            f"{len(missing)} images have no row, for example {missing[0]}",
            path=path,
            hint="Add a row for every image file.",
        )
    return table


def read_volume_folder(root: Path) -> SliceSet:
    """Read NIfTI image and label-map pairs and cut them into axial slices.

    The folder contains ``images/NAME.nii.gz`` (CT in HU) and
    ``labels/NAME.nii.gz`` on the same grid, labelled as the maps that
    ``covidct analyze`` writes: 1 and 2 lung, 3 heart, 4 ground-glass
    opacity, 5 consolidation, 0 elsewhere.

    Raises:
        InputError: A missing label map, a label map on another grid, or label
            values outside 0..5.
    """
    image_dir = root / "images"
    label_dir = root / "labels"
    if not image_dir.is_dir() or not label_dir.is_dir():
        raise InputError(
            "no images/ and labels/ sub-folders",
            path=root,
            hint="Put CT volumes in images/ and label maps with the same file "
            "names in labels/.",
        )
    files = sorted(
        p for p in image_dir.iterdir() if p.name.endswith((".nii", ".nii.gz"))
    )
    if not files:
        raise InputError(
            "the images/ folder contains no .nii or .nii.gz files",
            path=image_dir,
            hint="Give CT volumes in NIfTI format.",
        )
    parts = []
    for path in files:
        label_path = label_dir / path.name
        if not label_path.is_file():
            raise InputError(
                f"no label map for {path.name}",
                path=label_dir,
                hint=f"Add labels/{path.name} or remove the image.",
            )
        parts.append(_read_volume_pair(path, label_path))
    return SliceSet.concatenate(parts)


def _geometry(image: sitk.Image) -> str:
    return (
        f"size {list(image.GetSize())}, spacing "
        f"{[round(s, 4) for s in image.GetSpacing()]} mm, origin "
        f"{[round(o, 3) for o in image.GetOrigin()]} mm, direction "
        f"{[round(d, 4) for d in image.GetDirection()]}"
    )


def _same_grid(first: sitk.Image, second: sitk.Image) -> bool:
    return (
        first.GetSize() == second.GetSize()
        and np.allclose(first.GetSpacing(), second.GetSpacing(), atol=1e-3)
        and np.allclose(first.GetOrigin(), second.GetOrigin(), atol=1e-2)
        and np.allclose(first.GetDirection(), second.GetDirection(), atol=1e-4)
    )


def _read_volume_pair(image_path: Path, label_path: Path) -> SliceSet:
    image = sitk.ReadImage(str(image_path))
    labels = sitk.ReadImage(str(label_path))
    if image.GetDimension() != 3 or labels.GetDimension() != 3:
        raise InputError(
            "training volumes and label maps must be 3D",
            path=image_path,
            hint="Give one 3D CT and one 3D label map per patient.",
        )
    if not _same_grid(image, labels):
        raise InputError(
            f"the label map lies on another grid: image {_geometry(image)}; "
            f"label map {_geometry(labels)}",
            path=label_path,
            hint="Resample the label map onto the image grid with nearest-"
            "neighbour interpolation (for example in 3D Slicer), then retry.",
        )
    warnings: list[str] = []
    label_array = sitk.GetArrayFromImage(labels)
    if np.issubdtype(label_array.dtype, np.floating):
        if not np.array_equal(label_array, np.rint(label_array)):
            raise InputError(
                "the label map contains non-integer values",
                path=label_path,
                hint="Give integer labels: 1-2 lung, 3 heart, 4 ground-glass "
                "opacity, 5 consolidation.",
            )
        warnings.append(f"{label_path.name}: floating-point labels read as integers")
    label_array = label_array.astype(np.int64)
    values = set(np.unique(label_array).tolist())
    if not values <= VOLUME_ALLOWED_LABELS:
        unexpected = sorted(values - VOLUME_ALLOWED_LABELS)[:8]
        raise InputError(
            f"the label map contains values {unexpected} outside 0..5",
            path=label_path,
            hint="Use the labels of covidct's segmentation.nii.gz: 1-2 lung, "
            "3 heart, 4 ground-glass opacity, 5 consolidation.",
        )
    lung = np.isin(label_array, VOLUME_LUNG_LABELS + VOLUME_LESION_LABELS)
    if np.count_nonzero(lung) <= 1:
        warnings.append(
            f"{label_path.name}: the label map marks {np.count_nonzero(lung)} lung "
            "voxel(s); its slices teach the network that the lungs are absent"
        )
    for warning in warnings:
        logger.warning(warning)

    reorientation = Reorientation.from_geometry(
        np.array(image.GetDirection()).reshape(3, 3), image.GetSpacing()
    )
    hu = reorientation.to_canonical(sitk.GetArrayFromImage(image))
    codes = np.where(lung, LUNG, BACKGROUND).astype(np.uint8)
    codes[np.isin(label_array, VOLUME_LESION_LABELS)] = LESION
    codes = reorientation.to_canonical(codes)
    inputs, frame = hu_slices_to_inputs(hu)
    targets = _labels_to_input_grid(codes, frame)

    name = image_path.name.split(".nii")[0]
    count = hu.shape[0]
    patients = [name] * count
    previous, following = _neighbours(patients)
    return SliceSet(
        images=inputs,
        targets=targets,
        names=[f"{image_path.name}:{z}" for z in range(count)],
        patients=patients,
        splits=[""] * count,
        previous=previous,
        following=following,
        warnings=warnings,
    )


def _labels_to_input_grid(codes: np.ndarray, frame: SquareFrame) -> np.ndarray:
    """Pad label slices to the square frame and resize them with nearest neighbour."""
    dy, dx = frame.offset
    result = np.empty((codes.shape[0], INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    square = np.zeros((frame.side, frame.side), dtype=np.uint8)
    for index in range(codes.shape[0]):
        square[dy : dy + codes.shape[1], dx : dx + codes.shape[2]] = codes[index]
        result[index] = cv2.resize(
            square, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_NEAREST
        )
    return result
