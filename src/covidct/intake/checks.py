"""Checks that a volume is a usable CT before any later stage runs on it.

Each check raises an ``InputError`` that names the input and what to do, so
that the command line can print it and exit with status 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct.errors import InputError
from covidct.intake.hu import find_intensity_peaks
from covidct.intake.volume import CTVolume

__all__ = [
    "SliceGap",
    "check_hu",
    "check_slice_count",
    "check_slice_spacing",
    "check_z_extent",
    "describe_gaps",
    "find_slice_gaps",
    "format_mm",
    "interpolate_to_regular_spacing",
]

logger = logging.getLogger(__name__)

# Consecutive slices may differ from the nominal spacing by this fraction of it
# without counting as a gap: scanners write positions with rounding jitter.
SPACING_TOLERANCE = 0.01

# Air outside the body reads about -1000 HU, and lung parenchyma about -850 HU.
# NOTE: the -900 HU bound on the 1st percentile is a heuristic. On the real
# test series the 1st percentile lies between -1024 and -1017 HU for whole
# chest CTs and at -942 HU for a CT cropped close to the heart.
AIR_PERCENTILE = 1.0
AIR_MAX_HU = -900.0

MAX_LISTED_GAPS = 5

# Slices spaced wider than this (in mm) make lesion and organ volumes and
# texture features less reliable, so such volumes get a warning.
THICK_SLICE_MM = 5.0


@dataclass(frozen=True)
class SliceGap:
    """Two consecutive slices whose distance differs from the nominal spacing.

    Attributes:
        start_mm: Position of the first slice along the slice normal, in mm.
        end_mm: Position of the next slice along the slice normal, in mm.
        expected_mm: Nominal slice spacing of the series, in mm.
    """

    start_mm: float
    end_mm: float
    expected_mm: float

    @property
    def size_mm(self) -> float:
        """Distance between the two slices in mm."""
        return self.end_mm - self.start_mm

    def describe(self) -> str:
        """Describe the gap in words, with positions in mm."""
        return (
            f"gap of {format_mm(self.size_mm)} mm between z = "
            f"{format_mm(self.start_mm)} and {format_mm(self.end_mm)} mm, "
            f"expected {format_mm(self.expected_mm)} mm"
        )


def format_mm(value: float) -> str:
    """Format a length in mm with one to three decimals, e.g. ``-99.48``."""
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def check_slice_count(
    count: int, min_slices: int, path: str | Path, extent_mm: float | None = None
) -> None:
    """Raise when a volume has too few slices for a chest CT analysis.

    Args:
        count: Number of slices found.
        min_slices: Minimum number of slices accepted.
        path: Input that the slices came from, named in the error.
        extent_mm: Extent of the slices along z in mm, named in the error
            when known.

    Raises:
        InputError: ``count`` is below ``min_slices``.
    """
    if count >= min_slices:
        return
    noun = "slice" if count == 1 else "slices"
    extent = ""
    if extent_mm is not None:
        extent = f" covering {format_mm(extent_mm)} mm along z"
    raise InputError(
        f"the CT has {count} {noun}{extent}, fewer than the {min_slices} needed "
        "for a chest CT analysis",
        path=path,
        hint="Give the folder of the whole chest CT series, not a single slice or "
        "an excerpt.",
    )


def check_z_extent(volume: CTVolume, path: str | Path, min_extent_mm: float) -> None:
    """Raise for a slab too thin for a chest CT, and warn about thick slices.

    The extent along z is the number of slices times the slice spacing: the
    distance from the first to the last slice centre plus one spacing.

    Args:
        volume: The volume read, whose provenance receives the warning.
        path: Input that the volume came from, named in the error.
        min_extent_mm: Minimum extent along z in mm.

    Raises:
        InputError: The extent is below ``min_extent_mm``.
    """
    count = volume.shape[0]
    spacing = float(volume.spacing[2])
    extent = count * spacing
    if extent < min_extent_mm:
        raise InputError(
            f"the CT covers {format_mm(extent)} mm along z ({count} slices of "
            f"{format_mm(spacing)} mm), less than the {format_mm(min_extent_mm)} mm "
            "needed to contain the lungs",
            path=path,
            hint="Give the whole chest CT series, not a slab or an excerpt "
            "(in Python, IntakeOptions.min_extent_mm sets the limit).",
        )
    if spacing > THICK_SLICE_MM:
        volume.provenance.warn(
            f"the slices are {format_mm(spacing)} mm apart, thicker than "
            f"{format_mm(THICK_SLICE_MM)} mm, so lesion and organ volumes and "
            "texture features are less reliable than on thin slices"
        )


def find_slice_gaps(positions_mm: np.ndarray) -> tuple[float, list[SliceGap]]:
    """Find the nominal slice spacing and every deviation from it.

    The nominal spacing is the median distance between consecutive slices, so
    a few missing slices do not change it.

    Args:
        positions_mm: Slice positions along the slice normal in mm, sorted
            ascending, at least two.

    Returns:
        The nominal spacing in mm and the gaps whose size differs from it by
        more than 1 % of it, in slice order.
    """
    steps = np.diff(positions_mm)
    nominal = float(np.median(steps))
    gaps = [
        SliceGap(float(positions_mm[i]), float(positions_mm[i + 1]), nominal)
        for i in np.flatnonzero(np.abs(steps - nominal) > SPACING_TOLERANCE * nominal)
    ]
    return nominal, gaps


def describe_gaps(gaps: list[SliceGap]) -> str:
    """List the first few gaps in words, with a count of the rest."""
    text = "; ".join(gap.describe() for gap in gaps[:MAX_LISTED_GAPS])
    if len(gaps) > MAX_LISTED_GAPS:
        text += f"; and {len(gaps) - MAX_LISTED_GAPS} more"
    return text


def check_slice_spacing(
    positions_mm: np.ndarray, path: str | Path, *, allow_gaps: bool = False
) -> tuple[float, list[SliceGap]]:
    """Check that slices are evenly spaced, without missing slices.

    Args:
        positions_mm: Slice positions along the slice normal in mm, sorted
            ascending and without duplicates, at least two.
        path: Input that the slices came from, named in the error.
        allow_gaps: Return the gaps instead of raising, so that the caller can
            resample the volume.

    Returns:
        The nominal spacing in mm and the gaps found (empty when even).

    Raises:
        InputError: The spacing is uneven or a slice is missing, and
            ``allow_gaps`` is false.
    """
    nominal, gaps = find_slice_gaps(positions_mm)
    if gaps and not allow_gaps:
        noun = "gap" if len(gaps) == 1 else "gaps"
        raise InputError(
            f"the slices are unevenly spaced or a slice is missing ({len(gaps)} "
            f"{noun}): {describe_gaps(gaps)}",
            path=path,
            hint="Export the complete series again from the PACS, or pass "
            "--allow-gaps (IntakeOptions.allow_gaps in Python) to interpolate "
            "the missing slices linearly along z.",
        )
    return nominal, gaps


def interpolate_to_regular_spacing(
    hu: np.ndarray, positions_mm: np.ndarray, spacing_mm: float
) -> np.ndarray:
    """Resample slices onto an even grid along z with linear interpolation.

    Args:
        hu: Volume ``[z, y, x]`` in HU whose slice ``i`` lies at
            ``positions_mm[i]``.
        positions_mm: Slice positions along the slice normal in mm, sorted
            ascending and without duplicates.
        spacing_mm: Spacing of the new grid in mm.

    Returns:
        A float32 volume whose slice ``k`` lies at
        ``positions_mm[0] + k * spacing_mm``, covering the first to the last
        slice of ``hu``.
    """
    span = float(positions_mm[-1] - positions_mm[0])
    count = int(round(span / spacing_mm)) + 1
    targets = np.minimum(
        positions_mm[0] + spacing_mm * np.arange(count), positions_mm[-1]
    )
    upper = np.clip(
        np.searchsorted(positions_mm, targets, side="right"), 1, len(positions_mm) - 1
    )
    lower = upper - 1
    weight = (targets - positions_mm[lower]) / (
        positions_mm[upper] - positions_mm[lower]
    )
    weight = np.clip(weight, 0.0, 1.0).astype(np.float32)[:, None, None]
    return (hu[lower] * (1.0 - weight) + hu[upper] * weight).astype(np.float32)


def check_hu(hu: np.ndarray, path: str | Path) -> None:
    """Raise when the intensities of a CT are clearly not Hounsfield units.

    A CT in HU contains air at about -1000 HU, outside the body and in the
    lungs, so its 1st percentile lies below -900 HU. Windowed 8-bit exports
    (0 to 255) and stored DICOM values without the rescale (air near 0) fail.
    The error names the histogram peaks, which sit near -1000 HU (air) and
    -100 to 50 HU (fat and soft tissue) in a CT in HU.

    Args:
        hu: Volume in the units to check, any shape.
        path: Input that the volume came from, named in the error.

    Raises:
        InputError: The values are not in HU.
    """
    lowest = float(hu.min())
    highest = float(hu.max())
    sample = hu[::2, ::4, ::4] if hu.ndim == 3 else hu
    air = float(np.percentile(sample, AIR_PERCENTILE))
    logger.debug(
        "intensity range %.0f to %.0f, 1st percentile %.0f", lowest, highest, air
    )
    if air <= AIR_MAX_HU:
        return

    peaks = find_intensity_peaks(hu).describe()
    if lowest >= 0.0 and highest <= 255.0:
        raise InputError(
            f"the values lie between {lowest:g} and {highest:g} with {peaks}, "
            "like a windowed 8-bit image, not Hounsfield units (HU), where air "
            "is near -1000 and soft tissue near 0",
            path=path,
            hint="Give the original DICOM series or a volume in HU (air about "
            "-1000 HU, water 0 HU), such as a NIfTI converted from the DICOM "
            "series with dcm2niix. A windowed export cannot be converted back "
            "to HU, because the window clipped the values outside it.",
        )
    if lowest >= 0.0:
        raise InputError(
            f"the values start at {lowest:g} and the 1st percentile is {air:.0f} "
            f"with {peaks}, so air is not near -1000: these look like stored "
            "scanner values with a lost rescale, not Hounsfield units (HU)",
            path=path,
            hint="Convert to HU with HU = value * RescaleSlope + RescaleIntercept "
            "from the DICOM header (often HU = value - 1024), restore the "
            "scl_slope and scl_inter of a NIfTI file, or give the original "
            "DICOM series.",
        )
    raise InputError(
        f"the 1st percentile of the values is {air:.0f} with {peaks}, but a CT "
        f"in Hounsfield units (HU) has air below {AIR_MAX_HU:.0f}: the values "
        "do not look like HU",
        path=path,
        hint="Give a volume in HU (air about -1000 HU, water 0 HU), not a "
        "normalised or rescaled one, or give the original DICOM series.",
    )
