"""Read one CT series from a folder of DICOM files.

The folder may hold files under any names, in nested folders, with several
series mixed together. Headers are read once to group files by series and
choose one, and only the chosen series' pixels are decoded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from covidct.errors import InputError
from covidct.intake.checks import (
    THICK_SLICE_MM,
    SliceGap,
    check_slice_count,
    check_slice_spacing,
    describe_gaps,
    format_mm,
    interpolate_to_regular_spacing,
)
from covidct.intake.memory import available_memory_bytes, estimate_bytes
from covidct.intake.options import IntakeOptions
from covidct.intake.resample import (
    AIR_HU,
    Grid,
    nearest_axes,
    remove_shear,
    resample_to_axes,
    shear_angle_degrees,
)
from covidct.intake.series import (
    MAX_LISTED_FILES,
    FileNames,
    SeriesFiles,
    SliceHeader,
    choose_series,
    scan_folder,
)
from covidct.intake.volume import CTVolume, Provenance

__all__ = ["read_dicom_folder"]

logger = logging.getLogger(__name__)

# Slices closer than this along the normal count as the same position.
DUPLICATE_TOLERANCE_MM = 1e-3

# Shear of the slice stack against the slice normal, from a tilted gantry,
# above which the slices are shifted onto an orthogonal grid.
MIN_SHEAR_DEGREES = 0.5

# Shear above which the series is rejected: CT gantries tilt by at most about
# 30 degrees, so a larger shear means inconsistent positions.
MAX_TILT_DEGREES = 30.0

# Angle between an array axis and the nearest patient axis above which the
# volume is resampled onto a grid along the patient axes.
MIN_OBLIQUE_DEGREES = 1.0

# Deviations of ImageOrientationPatient from perpendicular unit vectors below
# this come from writing the cosines as decimal strings and are normalised
# without a warning.
ORIENTATION_NOISE = 1e-5

# Share of the slice positions that may hold a second, different slice before
# the series is rejected as two acquisitions mixed together.
MAX_DUPLICATE_FRACTION = 0.1

ACQUISITION_RULE = (
    "the acquisition with the most slice positions, and on a tie the lowest "
    "AcquisitionNumber"
)


def read_dicom_folder(
    folder: Path,
    options: IntakeOptions,
    provenance: Provenance,
    label: Path | None = None,
) -> CTVolume:
    """Read the CT series of a DICOM folder into a volume in HU.

    Args:
        folder: Folder searched recursively for DICOM files.
        options: Series override, slice and decoding limits.
        provenance: Record that receives the choices and warnings.
        label: Path that errors and provenance name in place of ``folder``,
            such as the zip file that ``folder`` was extracted from.

    Returns:
        The chosen series, sorted along the slice normal, in HU. The volume's
        z axis points along the cross product of the two ImageOrientationPatient
        rows, and its origin is the first slice's ImagePositionPatient.

    Raises:
        InputError: No CT series, an unknown ``options.series_uid``, too few
            slices, uneven spacing, two acquisitions that cannot be
            distinguished, a gantry tilt above ``MAX_TILT_DEGREES``, a series larger
            than the memory limit, or too many files that fail to decode.
    """
    display = FileNames(folder, label or folder)
    with _lenient_validation():
        series = scan_folder(folder, display, provenance)
        chosen = choose_series(series, options, display, provenance)
        slices = _prepare_slices(chosen, display, provenance)
        check_slice_count(
            len(slices), options.min_slices, display.label, _extent_mm(slices)
        )
        if len(slices) > 1 and not options.allow_gaps:
            # Fail before the slow decoding when the headers already show a gap.
            check_slice_spacing(_distances(slices), display.label)
        slices = _fit_in_memory(slices, options, display, provenance)

        hu, slices, failed = _decode_slices(slices, options, display, provenance)
        check_slice_count(
            len(slices), options.min_slices, display.label, _extent_mm(slices)
        )
        return _assemble_volume(hu, slices, failed, options, display, provenance)


@contextmanager
def _lenient_validation() -> Iterator[None]:
    """Stop pydicom from warning about every value that breaks the standard.

    pydicom warns and logs once per file and element, for instance for each
    slice whose SeriesInstanceUID is not a valid UID. Intake records one warning
    per series instead.

    NOTE: this changes pydicom's global ``reading_validation_mode`` while it
    runs, so other threads that read DICOM at the same time are not warned.
    """
    previous = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        pydicom.config.settings.reading_validation_mode = previous


def _prepare_slices(
    chosen: SeriesFiles, display: FileNames, provenance: Provenance
) -> list[SliceHeader]:
    """Keep the stackable slices of a series, sorted along the slice normal."""
    for path, reason in chosen.dropped:
        provenance.skipped_files.append(
            {"path": display.relative(path), "reason": reason}
        )
    if chosen.dropped:
        provenance.warn(
            f"skipped {len(chosen.dropped)} files of the chosen series that are "
            f"not CT image slices: {display.listing([p for p, _ in chosen.dropped])}"
        )

    # Slices that disagree on size, orientation or pixel spacing cannot share one
    # array, so only those with the most common geometry are kept.
    geometries = Counter(s.geometry_key() for s in chosen.slices)
    common = geometries.most_common(1)[0][0]
    slices = [s for s in chosen.slices if s.geometry_key() == common]
    odd = [s.path for s in chosen.slices if s.geometry_key() != common]
    if odd:
        for path in odd:
            provenance.skipped_files.append(
                {
                    "path": display.relative(path),
                    "reason": "image size, orientation or pixel spacing differs "
                    "from the rest of the series",
                }
            )
        provenance.warn(
            f"skipped {len(odd)} slices whose image size, orientation or pixel "
            f"spacing differs from the other {len(slices)}: {display.listing(odd)}"
        )

    repaired = [s for s in slices if s.orientation_error > ORIENTATION_NOISE]
    if repaired:
        worst = max(s.orientation_error for s in repaired)
        provenance.warn(
            f"the ImageOrientationPatient rows of {len(repaired)} slices are not "
            f"exactly perpendicular unit vectors (deviation up to {worst:.2g}), "
            "so they were normalised"
        )

    slices = _choose_acquisition(slices, display, provenance)
    return _drop_duplicates(slices, display, provenance)


def _position_keys(slices: list[SliceHeader]) -> list[float]:
    """Positions along the first slice's normal, rounded to find equal ones."""
    normal = slices[0].normal
    return [round(float(s.position @ normal) / DUPLICATE_TOLERANCE_MM) for s in slices]


def _choose_acquisition(
    slices: list[SliceHeader], display: FileNames, provenance: Provenance
) -> list[SliceHeader]:
    """Keep one acquisition when several in the series cover the same positions.

    A series whose AcquisitionNumber values cover disjoint positions, as when a
    scanner numbers each slice or each table position, is kept whole.
    """
    groups: dict[int | None, list[SliceHeader]] = {}
    for slice_ in slices:
        groups.setdefault(_acquisition_number(slice_), []).append(slice_)
    if len(groups) < 2:
        return slices
    keys = _position_keys(slices)
    owners: dict[float, set[int | None]] = {}
    for key, slice_ in zip(keys, slices, strict=True):
        owners.setdefault(key, set()).add(_acquisition_number(slice_))
    if all(len(numbers) == 1 for numbers in owners.values()):
        return slices

    def rank(number: int | None) -> tuple[int, int]:
        count = len(set(_position_keys(groups[number])))
        # More positions first, then the lowest number; None sorts last.
        return (-count, number if number is not None else 2**31)

    chosen = min(groups, key=rank)
    others = [s for s in slices if _acquisition_number(s) != chosen]
    for slice_ in others:
        provenance.skipped_files.append(
            {
                "path": display.relative(slice_.path),
                "reason": f"AcquisitionNumber {_acquisition_number(slice_)}, "
                f"and acquisition {chosen} of the series was used",
            }
        )
    counts = ", ".join(
        f"{number}: {len(groups[number])} slices" for number in sorted(groups, key=str)
    )
    provenance.warn(
        f"the series holds {len(groups)} acquisitions at overlapping positions "
        f"(AcquisitionNumber {counts}). Acquisition {chosen} was used by the rule "
        f"'{ACQUISITION_RULE}', and the {len(others)} slices of the others were "
        f"skipped: {display.listing([s.path for s in others])}"
    )
    provenance.details["acquisition_number"] = chosen
    return groups[chosen]


def _acquisition_number(slice_: SliceHeader) -> int | None:
    value = slice_.header.get("AcquisitionNumber")
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _drop_duplicates(
    slices: list[SliceHeader], display: FileNames, provenance: Provenance
) -> list[SliceHeader]:
    """Sort slices along the normal and drop those at an occupied position.

    Raises:
        InputError: More than ``MAX_DUPLICATE_FRACTION`` of the positions contain
            a second slice that is not a copy of the first, which means two
            acquisitions that the headers do not distinguish.
    """
    # Sort by position along the slice normal, never by file name or
    # InstanceNumber. The file path breaks ties, so duplicates drop stably.
    normal = slices[0].normal
    slices.sort(key=lambda s: (float(s.position @ normal), str(s.path), s.frame or 0))
    unique = [slices[0]]
    copies: list[tuple[SliceHeader, SliceHeader]] = []
    different: list[tuple[SliceHeader, SliceHeader]] = []
    for slice_ in slices[1:]:
        step = float((slice_.position - unique[-1].position) @ normal)
        if abs(step) >= DUPLICATE_TOLERANCE_MM:
            unique.append(slice_)
        elif _is_copy(slice_, unique[-1]):
            copies.append((slice_, unique[-1]))
        else:
            different.append((slice_, unique[-1]))

    if len(different) > MAX_DUPLICATE_FRACTION * len(unique):
        raise InputError(
            f"{len(different)} of the {len(unique)} slice positions contain a second "
            "slice that is not a copy of the first, so the series seems to hold "
            "two acquisitions that its AcquisitionNumber does not distinguish: "
            f"{display.listing([s.path for s, _ in different])}",
            path=display.label,
            hint="Export each acquisition as its own series, or remove the files "
            "of all but one acquisition.",
        )
    for kind, pairs in (
        ("identical copy of", copies),
        ("not an identical copy (SOPInstanceUID or content differ) of", different),
    ):
        if not pairs:
            continue
        for slice_, kept in pairs:
            provenance.skipped_files.append(
                {
                    "path": display.relative(slice_.path),
                    "reason": f"duplicate slice position: {kind} "
                    f"{display.relative(kept.path)}",
                }
            )
        described = ", ".join(
            f"{display.relative(s.path)} ({display.relative(k.path)})"
            for s, k in pairs[:MAX_LISTED_FILES]
        )
        if len(pairs) > MAX_LISTED_FILES:
            described += f" and {len(pairs) - MAX_LISTED_FILES} more"
        because = (
            "they are identical copies of it"
            if pairs is copies
            else "they are not identical copies of it"
        )
        provenance.warn(
            f"dropped {len(pairs)} slices at the same position as another slice, "
            f"which was kept, because {because} (dropped file, kept file in "
            f"brackets): {described}"
        )
    return unique


def _is_copy(slice_: SliceHeader, kept: SliceHeader) -> bool:
    """Return whether two slices at one position contain the same image."""
    if slice_.frame is not None or kept.frame is not None:
        return slice_.path == kept.path and slice_.frame == kept.frame
    uid = str(slice_.header.get("SOPInstanceUID", "") or "")
    if uid and uid != str(kept.header.get("SOPInstanceUID", "") or ""):
        return False
    return slice_.path.read_bytes() == kept.path.read_bytes()


def _extent_mm(slices: list[SliceHeader]) -> float | None:
    """Extent along the normal in mm: slice count times the median spacing."""
    if len(slices) < 2:
        if not slices:
            return None
        thickness = slices[0].header.get("SliceThickness")
        return float(thickness) if thickness not in (None, "") else None
    spacing = float(np.median(np.diff(_distances(slices))))
    return len(slices) * spacing


def _fit_in_memory(
    slices: list[SliceHeader],
    options: IntakeOptions,
    display: FileNames,
    provenance: Provenance,
) -> list[SliceHeader]:
    """Keep every k-th slice when the whole series would not fit in memory.

    The estimate comes from the headers, before any pixel is decoded.

    Raises:
        InputError: Even keeping every k-th slice at a spacing up to
            ``THICK_SLICE_MM`` would not fit.
    """
    first = slices[0]
    value_bytes = np.dtype(_hu_dtype(slices)).itemsize
    needed = estimate_bytes(len(slices), first.rows, first.columns, value_bytes)
    if options.max_memory_gb is None:
        limit = available_memory_bytes()
        source = "the available memory"
    else:
        limit = int(options.max_memory_gb * 1e9)
        source = "IntakeOptions.max_memory_gb"
    provenance.details["memory_estimate_gb"] = round(needed / 1e9, 3)
    if needed <= limit:
        return slices

    spacing = float(np.median(np.diff(_distances(slices)))) if len(slices) > 1 else 0.0
    for step in range(2, len(slices) + 1):
        kept = slices[::step]
        if spacing * step > THICK_SLICE_MM:
            break
        if estimate_bytes(len(kept), first.rows, first.columns, value_bytes) <= limit:
            provenance.warn(
                f"the series needs about {needed / 1e9:.2f} GB of memory to analyse "
                f"(estimate from {len(slices)} slices of {first.rows} x "
                f"{first.columns}), more than the {limit / 1e9:.2f} GB of {source}, "
                f"so only one slice in {step} was read: {len(kept)} slices "
                f"{format_mm(spacing * step)} mm apart"
            )
            provenance.details["memory_slice_step"] = step
            return kept
    raise InputError(
        f"the series needs about {needed / 1e9:.2f} GB of memory to analyse "
        f"(estimate from {len(slices)} slices of {first.rows} x {first.columns}), "
        f"more than the {limit / 1e9:.2f} GB of {source}, even when slices are "
        f"skipped up to a spacing of {format_mm(THICK_SLICE_MM)} mm",
        path=display.label,
        hint="Run on a machine with more memory, close other programs, or give "
        "a series with fewer or smaller slices.",
    )


def _decode_slices(
    slices: list[SliceHeader],
    options: IntakeOptions,
    display: FileNames,
    provenance: Provenance,
) -> tuple[np.ndarray, list[SliceHeader], list[Path]]:
    """Decode and rescale the pixels of each slice into one array in HU.

    Returns:
        The array ``[z, y, x]`` in HU, the slices that decoded, in order, and
        the files that failed to decode.
    """
    dtype = _hu_dtype(slices)
    hu = np.empty((len(slices), slices[0].rows, slices[0].columns), dtype=dtype)
    decoded: list[SliceHeader] = []
    failed: list[tuple[Path, str]] = []
    frames = _FrameCache()
    for slice_ in slices:
        try:
            pixels = frames.read(slice_) if slice_.frame is not None else None
            if pixels is None:
                pixels = _read_pixels(slice_)
        # Decoders raise many exception types on damaged data. Any of them
        # means this one slice is skipped.
        except Exception as exc:  # noqa: BLE001
            failed.append((slice_.path, f"pixel data could not be decoded: {exc}"))
            continue
        if pixels.shape != (slice_.rows, slice_.columns):
            failed.append(
                (
                    slice_.path,
                    f"pixel array shape {pixels.shape} differs from Rows x Columns "
                    f"({slice_.rows}, {slice_.columns})",
                )
            )
            continue
        if dtype == np.int16:
            values = pixels.astype(np.int32) * int(slice_.slope)
            hu[len(decoded)] = values + int(slice_.intercept)
        else:
            hu[len(decoded)] = pixels * slice_.slope + slice_.intercept
        decoded.append(slice_)

    if failed:
        for path, reason in failed:
            provenance.skipped_files.append(
                {"path": display.relative(path), "reason": reason}
            )
        paths = [path for path, _ in failed]
        fraction = len(failed) / len(slices)
        if fraction > options.max_unreadable_fraction:
            raise InputError(
                f"{len(failed)} of {len(slices)} files of the series could not be "
                f"decoded ({fraction:.0%}, above the limit of "
                f"{options.max_unreadable_fraction:.0%}): "
                f"{display.listing(paths)}; first error: {failed[0][1]}",
                path=display.label,
                hint="Export the series again from the PACS, uncompressed if "
                "possible (in Python, IntakeOptions.max_unreadable_fraction "
                "sets the limit).",
            )
        provenance.warn(
            f"skipped {len(failed)} slices whose pixel data could not be decoded: "
            f"{display.listing(paths)}"
        )
    return hu[: len(decoded)], decoded, [path for path, _ in failed]


def _hu_dtype(slices: list[SliceHeader]) -> type[np.generic]:
    """Return int16 when every rescaled value is an integer that fits it."""
    for slice_ in slices:
        if slice_.slope != round(slice_.slope) or slice_.intercept != round(
            slice_.intercept
        ):
            return np.float32
        if slice_.signed:
            low, high = (
                -(2 ** (slice_.bits_stored - 1)),
                2 ** (slice_.bits_stored - 1) - 1,
            )
        else:
            low, high = 0, 2**slice_.bits_stored - 1
        ends = [
            low * slice_.slope + slice_.intercept,
            high * slice_.slope + slice_.intercept,
        ]
        if min(ends) < -32768 or max(ends) > 32767:
            return np.float32
    return np.int16


class _FrameCache:
    """Decoded frames of the last multi-frame file read.

    Frames are read in slice order, and the frames of one file are usually
    next to each other in it, so each file is decoded about once.
    """

    def __init__(self) -> None:
        self._path: Path | None = None
        self._frames = np.zeros((0, 0, 0))

    def read(self, slice_: SliceHeader) -> np.ndarray:
        """Return the pixels of one frame, decoding its file when not cached."""
        if slice_.path != self._path:
            self._path = None
            frames = _read_pixels(slice_)
            self._frames = frames[None] if frames.ndim == 2 else frames
            self._path = slice_.path
        if slice_.frame is None or slice_.frame >= len(self._frames):
            raise ValueError(
                f"frame {slice_.frame} is missing from the pixel data, which "
                f"holds {len(self._frames)} frames"
            )
        return self._frames[slice_.frame]


def _read_pixels(slice_: SliceHeader) -> np.ndarray:
    """Read a file again with its pixel data and decode all its frames."""
    dataset = pydicom.dcmread(slice_.path, force=slice_.forced)
    if "TransferSyntaxUID" not in dataset.file_meta:
        # A file without the DICOM file header does not state its transfer
        # syntax; bare data sets are uncompressed, in the encoding pydicom found.
        implicit, little_endian = dataset.original_encoding
        if implicit:
            syntax = ImplicitVRLittleEndian
        elif little_endian:
            syntax = ExplicitVRLittleEndian
        else:
            syntax = ExplicitVRBigEndian
        dataset.file_meta.TransferSyntaxUID = syntax
    _check_stream_ends(dataset)
    return dataset.pixel_array


def _check_stream_ends(dataset: Dataset) -> None:
    """Raise when a JPEG-family frame lacks its end marker, as in a cut file.

    pylibjpeg decodes a cut JPEG stream without an error, with the missing
    rows filled in, so the marker is checked first. JPEG, JPEG-LS and JPEG
    2000 code streams all end with the bytes FF D9.

    NOTE: damage inside a stream that keeps its end marker decodes without an
    error into a wrong image, and is not detected.
    """
    syntax = dataset.file_meta.TransferSyntaxUID
    if not syntax.is_encapsulated or syntax == RLELossless:
        return
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    for index, frame in enumerate(
        generate_frames(dataset.PixelData, number_of_frames=count)
    ):
        # Fragments are padded to an even length with one zero byte.
        if not frame.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise ValueError(
                f"the compressed stream of frame {index + 1} ends without its "
                "end marker (FF D9), so the file is truncated"
            )


def _distances(slices: list[SliceHeader]) -> np.ndarray:
    """Positions of the slices along the first slice's normal, in mm."""
    normal = slices[0].normal
    return np.array([s.position @ normal for s in slices])


def _assemble_volume(
    hu: np.ndarray,
    slices: list[SliceHeader],
    failed: list[Path],
    options: IntakeOptions,
    display: FileNames,
    provenance: Provenance,
) -> CTVolume:
    """Check the spacing of the decoded slices and build the volume's geometry.

    Args:
        hu: Decoded slices in HU, sorted along the slice normal.
        slices: Headers of the decoded slices, in the same order.
        failed: Files of the series whose pixels failed to decode.
        options: ``allow_gaps`` decides between raising and interpolating.
        display: Names of files for messages.
        provenance: Record that receives warnings and details.
    """
    first = slices[0]
    row_direction = first.orientation[:3]
    column_direction = first.orientation[3:]
    normal = first.normal
    distances = _distances(slices)

    if len(slices) == 1:
        spacing_z = float(first.header.get("SliceThickness") or 1.0)
        provenance.warn(
            f"the series has a single slice, so its z spacing is taken as "
            f"{format_mm(spacing_z)} mm from SliceThickness (1.0 mm when unset)"
        )
        gaps: list[SliceGap] = []
    else:
        try:
            spacing_z, gaps = check_slice_spacing(
                distances, display.label, allow_gaps=options.allow_gaps
            )
        except InputError as exc:
            if not failed:
                raise
            raise InputError(
                f"{exc.message}; {len(failed)} slices could not be decoded and "
                f"leave gaps: {display.listing(failed)}",
                path=exc.path,
                hint=exc.hint,
            ) from exc
    if gaps:
        hu = interpolate_to_regular_spacing(hu, distances, spacing_z)
        provenance.warn(
            f"interpolated {hu.shape[0] - len(slices)} missing or uneven slices "
            f"linearly along z to the nominal spacing of {format_mm(spacing_z)} mm: "
            f"{describe_gaps(gaps)}"
        )
        provenance.details["interpolated_gaps"] = [
            {"start_mm": g.start_mm, "end_mm": g.end_mm, "expected_mm": g.expected_mm}
            for g in gaps
        ]

    row_spacing, column_spacing = first.pixel_spacing
    grid = Grid(
        spacing=np.array([column_spacing, row_spacing, spacing_z]),
        origin=first.position,
        direction=np.column_stack([row_direction, column_direction, normal]),
    )
    if len(slices) > 1:
        positions = np.array([s.position for s in slices])
        if gaps:
            # Interpolated slices lie on the line between their neighbours.
            targets = distances[0] + spacing_z * np.arange(hu.shape[0])
            positions = np.column_stack(
                [np.interp(targets, distances, positions[:, i]) for i in range(3)]
            )
        tilt = first.header.get("GantryDetectorTilt")
        hu, grid = _correct_shear(hu, positions, tilt, grid, display, provenance)
    hu, grid = _correct_obliquity(hu, grid, display, provenance)

    provenance.details.update(_series_details(slices))
    return CTVolume(
        hu=hu,
        spacing=tuple(float(v) for v in grid.spacing),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in grid.origin),  # type: ignore[arg-type]
        direction=grid.direction,
        provenance=provenance,
    )


def _correct_shear(
    hu: np.ndarray,
    positions: np.ndarray,
    tilt: Any,
    grid: Grid,
    display: FileNames,
    provenance: Provenance,
) -> tuple[np.ndarray, Grid]:
    """Shift the slices of a sheared stack, as after a gantry tilt, into line.

    Args:
        hu: Slices ``[z, y, x]`` in HU, evenly spaced along the normal.
        positions: ImagePositionPatient of each slice of ``hu``, in mm.
        tilt: GantryDetectorTilt of the series, named in the warning.
        grid: Geometry of the stack before the correction.
        display: Names of files for messages.
        provenance: Record that receives the warning.

    Raises:
        InputError: The shear exceeds ``MAX_TILT_DEGREES``.
    """
    normal = grid.direction[:, 2]
    angle = shear_angle_degrees(positions, normal)
    if angle <= MIN_SHEAR_DEGREES:
        return hu, grid
    stated = "" if tilt in (None, "") else f", GantryDetectorTilt {float(tilt):g}"
    if angle > MAX_TILT_DEGREES:
        raise InputError(
            f"the slice positions are sheared by {angle:.1f} degrees against the "
            f"slice normal{stated}, more than the {MAX_TILT_DEGREES:g} degrees "
            "of a gantry tilt, so ImagePositionPatient and "
            "ImageOrientationPatient disagree",
            path=display.label,
            hint="Check the export of the series. Slices must be stacked along "
            "the normal of their ImageOrientationPatient.",
        )
    hu, grid = remove_shear(hu, positions, grid)
    offset = positions[-1] - positions[0]
    across = float(np.linalg.norm(offset - (offset @ normal) * normal))
    provenance.warn(
        f"the slice positions are sheared by {angle:.1f} degrees against the "
        f"slice normal (gantry tilt{stated}), so each slice was shifted within "
        f"its plane by its offset, up to {format_mm(across)} mm, with linear "
        "interpolation onto an orthogonal grid"
    )
    provenance.details["gantry_tilt_corrected_degrees"] = round(angle, 2)
    return hu, grid


def _correct_obliquity(
    hu: np.ndarray, grid: Grid, display: FileNames, provenance: Provenance
) -> tuple[np.ndarray, Grid]:
    """Resample an oblique volume onto a grid along the nearest patient axes.

    Raises:
        InputError: Two array axes are closest to the same patient axis.
    """
    nearest = nearest_axes(grid.direction)
    if nearest is None:
        raise InputError(
            "the slices are oblique by about 45 degrees, so the nearest "
            "patient axes of the image axes cannot be chosen",
            path=display.label,
            hint="Give a series reconstructed in the axial, coronal or sagittal plane.",
        )
    target, angle = nearest
    if angle <= MIN_OBLIQUE_DEGREES:
        return hu, grid
    original_shape = hu.shape
    hu, grid = resample_to_axes(hu, grid, target)
    provenance.warn(
        f"the slices are oblique: the image axes are up to {angle:.1f} degrees "
        "from the patient axes, so the volume was resampled with linear "
        f"interpolation from {original_shape[0]} x {original_shape[1]} x "
        f"{original_shape[2]} to {hu.shape[0]} x {hu.shape[1]} x {hu.shape[2]} "
        "voxels of the same spacing along the patient axes, with air "
        f"({AIR_HU:g} HU) outside the scanned field"
    )
    provenance.details["oblique_resampled_degrees"] = round(angle, 2)
    return hu, grid


def _series_details(slices: list[SliceHeader]) -> dict[str, Any]:
    """Acquisition facts for the report, without patient identifiers."""
    header = slices[0].header
    syntax = header.file_meta.get("TransferSyntaxUID") if header.file_meta else None
    kernel = header.get("ConvolutionKernel")
    if isinstance(kernel, pydicom.multival.MultiValue):
        kernel = "\\".join(str(k) for k in kernel)

    def text(keyword: str) -> str | None:
        value = header.get(keyword)
        return None if value in (None, "") else str(value)

    return {
        "transfer_syntax": None if syntax is None else f"{syntax} ({syntax.name})",
        "manufacturer": text("Manufacturer"),
        "model": text("ManufacturerModelName"),
        "convolution_kernel": None if kernel in (None, "") else str(kernel),
        "slice_thickness_mm": text("SliceThickness"),
        "kvp": text("KVP"),
        "slice_count": len(slices),
    }
