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
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from covidct.errors import InputError
from covidct.intake.checks import (
    SliceGap,
    check_slice_count,
    check_slice_spacing,
    describe_gaps,
    format_mm,
    interpolate_to_regular_spacing,
)
from covidct.intake.options import IntakeOptions
from covidct.intake.series import (
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
# above which a warning is recorded.
MAX_SHEAR_DEGREES = 0.5


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
            slices, uneven spacing, or too many files that fail to decode.
    """
    display = FileNames(folder, label or folder)
    with _lenient_validation():
        series = scan_folder(folder, display, provenance)
        chosen = choose_series(series, options, display, provenance)
        slices = _prepare_slices(chosen, display, provenance)
        check_slice_count(len(slices), options.min_slices, display.label)
        if len(slices) > 1 and not options.allow_gaps:
            # Fail before the slow decoding when the headers already show a gap.
            check_slice_spacing(_distances(slices), display.label)

        hu, slices, failed = _decode_slices(slices, options, display, provenance)
        check_slice_count(len(slices), options.min_slices, display.label)
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

    # Sort by position along the slice normal, never by file name or
    # InstanceNumber. The file path breaks ties, so duplicates drop stably.
    normal = slices[0].normal
    slices.sort(key=lambda s: (float(s.position @ normal), str(s.path)))
    unique = [slices[0]]
    duplicates: list[Path] = []
    for slice_ in slices[1:]:
        step = float((slice_.position - unique[-1].position) @ normal)
        if abs(step) < DUPLICATE_TOLERANCE_MM:
            duplicates.append(slice_.path)
        else:
            unique.append(slice_)
    if duplicates:
        for path in duplicates:
            provenance.skipped_files.append(
                {
                    "path": display.relative(path),
                    "reason": "duplicate slice position",
                }
            )
        provenance.warn(
            f"dropped {len(duplicates)} slices at the same position as another "
            f"slice: {display.listing(duplicates)}"
        )
    return unique


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
    for slice_ in slices:
        try:
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


def _read_pixels(slice_: SliceHeader) -> np.ndarray:
    """Read a file again with its pixel data and decode it."""
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
    return dataset.pixel_array


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

    _warn_about_shear(slices, normal, provenance)
    provenance.details.update(_series_details(slices))
    row_spacing, column_spacing = first.pixel_spacing
    return CTVolume(
        hu=hu,
        spacing=(column_spacing, row_spacing, spacing_z),
        origin=tuple(float(v) for v in first.position),  # type: ignore[arg-type]
        direction=np.column_stack([row_direction, column_direction, normal]),
        provenance=provenance,
    )


def _warn_about_shear(
    slices: list[SliceHeader], normal: np.ndarray, provenance: Provenance
) -> None:
    """Warn when the slice stack is sheared, as after a gantry tilt."""
    offset = slices[-1].position - slices[0].position
    along = float(offset @ normal)
    across = float(np.linalg.norm(offset - along * normal))
    angle = float(np.degrees(np.arctan2(across, along)))
    if angle > MAX_SHEAR_DEGREES:
        # NOTE: the volume keeps an orthogonal direction matrix, so positions in
        # mm drift by up to `across` mm between the first and last slices.
        provenance.warn(
            f"the slice positions are sheared by {angle:.1f} degrees against the "
            f"slice normal (gantry tilt). The volume ignores the shear, so "
            f"positions are off by up to {format_mm(across)} mm at the far end"
        )


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
