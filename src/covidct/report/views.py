"""Axial and coronal images of the CT with the masks, in radiological display.

Every image is a pair of PNG files: the CT in a lung window (grey) and the masks
as a mostly transparent RGBA layer, so that the HTML page can hide the masks.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from covidct.intake.volume import CTVolume
from covidct.report.masks import LABEL_COLOURS
from covidct.report.png import encode_png
from covidct.segment.result import Segmentation

__all__ = [
    "DisplayFrame",
    "View",
    "display_frame",
    "render_views",
    "to_display",
]

logger = logging.getLogger(__name__)

#: Lung window: level and width in HU.
LUNG_WINDOW_LEVEL_HU = -600.0
LUNG_WINDOW_WIDTH_HU = 1500.0

#: Positions of the axial images between the lungs' most inferior (0) and most
#: superior (1) slices. The ends are left out because they show little lung.
AXIAL_FRACTIONS = (0.9, 0.7, 0.5, 0.3, 0.1)

#: Opacity (0 to 1) of each label over the CT. The lungs (1, 2) are drawn as
#: outlines and the other labels as translucent fills.
_OPACITY = {1: 0.9, 2: 0.9, 3: 0.35, 4: 0.5, 5: 0.6}

# Width in pixels of the lung outlines, drawn inside the lung.
_OUTLINE_PX = 2

# Resampling to square pixels never makes an image taller than this.
_MAX_ROWS = 2048


@dataclass(frozen=True)
class DisplayFrame:
    """The axis permutation and flips from a ``[z, y, x]`` array to display axes.

    Display axis 0 runs from inferior to superior, axis 1 from anterior to
    posterior and axis 2 from patient right to patient left (LPS order reversed).

    Attributes:
        source_axes: For each display axis, the array axis it comes from.
        flipped: For each display axis, whether the array axis runs the other way.
        spacing: Voxel size along the display axes in mm.
        obliquity_deg: Largest angle between an array axis and the patient axis
            it is shown along, in degrees; 0 for an axis-aligned volume.
    """

    source_axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]
    obliquity_deg: float


def display_frame(
    direction: np.ndarray, spacing: tuple[float, float, float]
) -> DisplayFrame:
    """Find the display axes of a volume from its direction matrix.

    Each array axis is shown along the patient axis closest to its direction.
    The pairing maximises the summed alignment, so it stays a permutation even
    for volumes tilted by 45 degrees.

    Args:
        direction: 3 x 3 LPS direction cosines whose columns are the x, y and z
            array axes.
        spacing: Voxel size ``(x, y, z)`` in mm.

    Returns:
        The display frame.
    """
    cosines = np.abs(np.asarray(direction, dtype=float).reshape(3, 3))
    # patient_axis_of[j] is the LPS axis (0 L, 1 P, 2 S) that array axis j
    # (0 x, 1 y, 2 z) is shown along.
    patient_axis_of = max(
        itertools.permutations(range(3)),
        key=lambda perm: sum(cosines[perm[j], j] for j in range(3)),
    )
    signs = [np.sign(direction[patient_axis_of[j], j]) for j in range(3)]
    alignment = min(cosines[patient_axis_of[j], j] for j in range(3))

    source_axes = []
    flipped = []
    display_spacing = []
    for display_axis in range(3):
        patient_axis = 2 - display_axis
        j = patient_axis_of.index(patient_axis)
        # SimpleITK axis j (x, y, z) is numpy axis 2 - j of a [z, y, x] array.
        source_axes.append(2 - j)
        flipped.append(bool(signs[j] < 0))
        display_spacing.append(float(spacing[j]))
    return DisplayFrame(
        source_axes=tuple(source_axes),  # type: ignore[arg-type]
        flipped=tuple(flipped),  # type: ignore[arg-type]
        spacing=tuple(display_spacing),  # type: ignore[arg-type]
        obliquity_deg=float(np.degrees(np.arccos(np.clip(alignment, 0.0, 1.0)))),
    )


def to_display(array: np.ndarray, frame: DisplayFrame) -> np.ndarray:
    """Return a view of a ``[z, y, x]`` array on the display axes of ``frame``."""
    view = np.transpose(array, frame.source_axes)
    for axis, flip in enumerate(frame.flipped):
        if flip:
            view = np.flip(view, axis=axis)
    return view


def _display_point_mm(
    volume: CTVolume, frame: DisplayFrame, display_index: tuple[float, float, float]
) -> np.ndarray:
    """Return the LPS position in mm of a (fractional) display index."""
    shape = volume.shape
    numpy_index = [0.0, 0.0, 0.0]
    for display_axis, value in enumerate(display_index):
        axis = frame.source_axes[display_axis]
        last = shape[axis] - 1
        numpy_index[axis] = last - value if frame.flipped[display_axis] else value
    xyz_index = np.array(numpy_index[::-1])
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    return np.asarray(volume.origin) + direction @ (
        xyz_index * np.asarray(volume.spacing)
    )


@dataclass
class View:
    """One image of the report.

    Attributes:
        plane: "axial" or "coronal".
        title: Short name shown above the image, such as "Axial 2".
        caption: Position and slice number, in words.
        ct_png: The CT in the lung window, grey PNG.
        overlay_png: The masks, RGBA PNG of the same size.
        width: Image width in pixels.
        height: Image height in pixels.
        orientation: Patient direction at the top, bottom, left and right edges.
        levels: For the coronal image, the axial images it crosses, as
            (title, distance from the top edge as a fraction of the height).
    """

    plane: str
    title: str
    caption: str
    ct_png: bytes
    overlay_png: bytes
    width: int
    height: int
    orientation: dict[str, str]
    levels: list[tuple[str, float]] = field(default_factory=list)


def _window(hu: np.ndarray) -> np.ndarray:
    low = LUNG_WINDOW_LEVEL_HU - LUNG_WINDOW_WIDTH_HU / 2
    scaled = (hu.astype(np.float32) - low) * (255.0 / LUNG_WINDOW_WIDTH_HU)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _square_pixels(
    image: np.ndarray, row_mm: float, column_mm: float, linear: bool
) -> np.ndarray:
    """Resample the rows of a 2D image so that its pixels are square."""
    rows = image.shape[0]
    target = min(_MAX_ROWS, max(1, round(rows * row_mm / column_mm)))
    if target == rows:
        return image
    positions = (np.arange(target) + 0.5) * (rows / target) - 0.5
    positions = np.clip(positions, 0, rows - 1)
    if not linear:
        return image[np.rint(positions).astype(int)]
    below = np.floor(positions).astype(int)
    above = np.minimum(below + 1, rows - 1)
    weight = (positions - below)[:, None].astype(np.float32)
    return image[below] * (1 - weight) + image[above] * weight


def _overlay(lungs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Draw lung outlines and the fills of the other labels as an RGBA image."""
    rgba = np.zeros((*labels.shape, 4), dtype=np.uint8)
    for value in (3, 4, 5):
        mask = labels == value
        rgba[mask, :3] = LABEL_COLOURS[value]
        rgba[mask, 3] = round(255 * _OPACITY[value])
    for value in (1, 2):
        mask = lungs == value
        if not mask.any():
            continue
        inner = ndimage.binary_erosion(mask, iterations=_OUTLINE_PX)
        outline = mask & ~inner
        rgba[outline, :3] = LABEL_COLOURS[value]
        rgba[outline, 3] = round(255 * _OPACITY[value])
    return rgba


def _make_view(
    plane: str,
    title: str,
    caption: str,
    hu: np.ndarray,
    lungs: np.ndarray,
    labels: np.ndarray,
    row_mm: float,
    column_mm: float,
    orientation: dict[str, str],
) -> View:
    grey = _window(_square_pixels(hu, row_mm, column_mm, linear=True))
    lungs = _square_pixels(lungs, row_mm, column_mm, linear=False)
    labels = _square_pixels(labels, row_mm, column_mm, linear=False)
    return View(
        plane=plane,
        title=title,
        caption=caption,
        ct_png=encode_png(grey),
        overlay_png=encode_png(_overlay(lungs, labels)),
        width=int(grey.shape[1]),
        height=int(grey.shape[0]),
        orientation=orientation,
    )


def _array_index(frame: DisplayFrame, display_axis: int, index: int, size: int) -> int:
    """Return the array index of a display index along one display axis."""
    return size - 1 - index if frame.flipped[display_axis] else index


def _lung_range(lungs: np.ndarray) -> tuple[int, int] | None:
    """Return the first and last display slices (inferior to superior) with lung."""
    slices = np.flatnonzero(lungs.any(axis=(1, 2)))
    if slices.size == 0:
        return None
    return int(slices[0]), int(slices[-1])


def render_views(volume: CTVolume, segmentation: Segmentation) -> list[View]:
    """Render five axial images across the lungs and one coronal image.

    The axial images are spread over the cranio-caudal extent of the lungs
    (``AXIAL_FRACTIONS``), from superior to inferior. The coronal image passes
    through the coronal plane with the largest lung area. Without any lung
    voxel, both are spread over the whole volume instead. Images follow the
    radiological convention: the patient's right is on the image's left,
    anterior (axial) or superior (coronal) is up, and pixels are square in mm.

    Args:
        volume: The CT.
        segmentation: Masks on the grid of ``volume``.

    Returns:
        The axial views, then the coronal view.
    """
    frame = display_frame(volume.direction, volume.spacing)
    hu = to_display(volume.hu, frame)
    lungs = to_display(segmentation.lungs, frame)
    labels = to_display(segmentation.label_map(), frame)
    n_axial, n_coronal, _ = hu.shape
    spacing_is, spacing_ap, spacing_rl = frame.spacing

    # NOTE: an oblique volume is shown on its array axes without resampling, so
    # the image edges are tilted from the patient axes by up to obliquity_deg.
    oblique = ""
    if frame.obliquity_deg > 1.0:
        oblique = f", oblique by {frame.obliquity_deg:.0f}° (not resampled)"

    extent = _lung_range(lungs)
    if extent is None:
        logger.warning(
            "no lung voxel in the segmentation: report images are spread over "
            "the whole volume"
        )
        first, last = 0, n_axial - 1
        coronal_index = n_coronal // 2
    else:
        first, last = extent
        coronal_index = int(np.argmax(lungs.sum(axis=(0, 2), dtype=np.int64)))

    views = []
    levels = []
    for number, fraction in enumerate(AXIAL_FRACTIONS, start=1):
        index = round(first + fraction * (last - first))
        title = f"Axial {number}"
        centre = (index, (n_coronal - 1) / 2, (hu.shape[2] - 1) / 2)
        z_mm = _display_point_mm(volume, frame, centre)[2]
        slice_number = _array_index(frame, 0, index, n_axial) + 1
        caption = f"z = {z_mm:.1f} mm, slice {slice_number} of {n_axial}{oblique}"
        views.append(
            _make_view(
                "axial",
                title,
                caption,
                np.ascontiguousarray(hu[index]),
                np.ascontiguousarray(lungs[index]),
                np.ascontiguousarray(labels[index]),
                spacing_ap,
                spacing_rl,
                {"top": "A", "bottom": "P", "left": "R", "right": "L"},
            )
        )
        # The coronal image is shown superior up, so display slice `index`
        # lies at this fraction of its height from the top edge.
        levels.append((str(number), (n_axial - 1 - index + 0.5) / n_axial))

    centre = ((n_axial - 1) / 2, coronal_index, (hu.shape[2] - 1) / 2)
    y_mm = _display_point_mm(volume, frame, centre)[1]
    row_number = _array_index(frame, 1, coronal_index, n_coronal) + 1
    coronal = _make_view(
        "coronal",
        "Coronal",
        f"y = {y_mm:.1f} mm, row {row_number} of {n_coronal}{oblique}",
        np.ascontiguousarray(hu[::-1, coronal_index, :]),
        np.ascontiguousarray(lungs[::-1, coronal_index, :]),
        np.ascontiguousarray(labels[::-1, coronal_index, :]),
        spacing_is,
        spacing_rl,
        {"top": "S", "bottom": "I", "left": "R", "right": "L"},
    )
    coronal.levels = levels
    views.append(coronal)
    return views
