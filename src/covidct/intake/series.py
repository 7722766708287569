"""Group the files of a DICOM folder into series and choose the CT series.

Files are grouped by SeriesInstanceUID from headers read without pixel data.
Files that are not DICOM, not CT images or localizers are set aside with a
reason, and one CT series is chosen by ``SELECTION_RULE`` or by the user.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from covidct.errors import InputError
from covidct.intake.checks import format_mm
from covidct.intake.multiframe import (
    MULTI_FRAME_CT_STORAGE,
    MultiFrameError,
    read_frame_headers,
)
from covidct.intake.options import IntakeOptions
from covidct.intake.slices import (
    MAX_ORIENTATION_ERROR,
    SliceHeader,
    normalise_orientation,
)
from covidct.intake.volume import Provenance

__all__ = [
    "SELECTION_RULE",
    "FileNames",
    "SeriesFiles",
    "SliceHeader",
    "choose_series",
    "scan_folder",
]

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

SELECTION_RULE = (
    "series with axial slices first, then the one with the most slices, then the "
    "one with the thinnest slice spacing, and on a tie the lowest SeriesInstanceUID"
)

MAX_LISTED_FILES = 5


@dataclass
class SeriesFiles:
    """The files of one SeriesInstanceUID, usable or not."""

    key: str
    uid: str
    description: str
    modalities: Counter[str] = field(default_factory=Counter)
    slices: list[SliceHeader] = field(default_factory=list)
    dropped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def modality(self) -> str:
        return self.modalities.most_common(1)[0][0] if self.modalities else ""

    @property
    def file_count(self) -> int:
        return len(self.slices) + len(self.dropped)

    def slice_count(self) -> int:
        """Number of distinct slice positions among the usable slices."""
        return len(np.unique(np.round(self._distances(), 3)))

    def orientation_name(self) -> str:
        if not self.slices:
            return "unknown"
        axis = int(np.argmax(np.abs(self.slices[0].normal)))
        return ("sagittal", "coronal", "axial")[axis]

    def spacing_mm(self) -> float:
        """Median distance between distinct slice positions, infinite for one."""
        distances = np.unique(np.round(self._distances(), 3))
        return float(np.median(np.diff(distances))) if len(distances) > 1 else np.inf

    def rank(self) -> tuple[bool, int, float]:
        """Sort key of the selection rule: larger is preferred."""
        return (
            self.orientation_name() == "axial",
            self.slice_count(),
            -self.spacing_mm(),
        )

    def summary(self, reason: str) -> dict[str, Any]:
        return {
            "series_uid": self.uid,
            "description": self.description,
            "slice_count": self.slice_count() if self.slices else 0,
            "file_count": self.file_count,
            "modality": self.modality,
            "reason": reason,
        }

    def _distances(self) -> np.ndarray:
        if not self.slices:
            return np.zeros(0)
        normal = self.slices[0].normal
        return np.array([s.position @ normal for s in self.slices])


class FileNames:
    """Names of files as the user knows them: relative to the folder or zip."""

    def __init__(self, root: Path, label: Path) -> None:
        self.root = root
        self.label = label

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def listing(self, paths: list[Path]) -> str:
        names = [self.relative(p) for p in paths[:MAX_LISTED_FILES]]
        text = ", ".join(names)
        if len(paths) > MAX_LISTED_FILES:
            text += f" and {len(paths) - MAX_LISTED_FILES} more"
        return text


def scan_folder(
    folder: Path, display: FileNames, provenance: Provenance
) -> dict[str, SeriesFiles]:
    """Read every header under ``folder`` and group the files by series."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    if not paths:
        raise InputError(
            "the folder contains no files",
            path=display.label,
            hint="Give the folder that contains the DICOM files of the CT series.",
        )

    series: dict[str, SeriesFiles] = {}
    not_dicom: list[Path] = []
    forced: list[Path] = []
    invalid_uids: set[str] = set()
    for path in paths:
        header, is_forced, reason = _read_header(path)
        if header is None:
            provenance.skipped_files.append(
                {"path": display.relative(path), "reason": reason}
            )
            not_dicom.append(path)
            continue
        if is_forced:
            forced.append(path)
        uid = str(header.get("SeriesInstanceUID", "") or "").strip()
        if uid and not UID(uid).is_valid:
            invalid_uids.add(uid)
        key = uid or _fallback_series_key(header)
        entry = series.get(key)
        if entry is None:
            description = str(header.get("SeriesDescription", "") or "").strip()
            entry = series[key] = SeriesFiles(key=key, uid=uid, description=description)
        modality = str(header.get("Modality", "") or "").strip()
        entry.modalities[modality] += 1
        slices, reason = _classify(path, header, is_forced)
        if slices:
            entry.slices.extend(slices)
        else:
            entry.dropped.append((path, reason))

    if not_dicom:
        provenance.warn(
            f"skipped {len(not_dicom)} files that are not DICOM or could not be "
            f"read: {display.listing(not_dicom)}"
        )
    if forced:
        provenance.warn(
            f"{len(forced)} files lack the DICOM file header (no 'DICM' marker) "
            f"and were read as bare data sets: {display.listing(forced)}"
        )
    for uid in sorted(invalid_uids):
        provenance.warn(
            f"SeriesInstanceUID '{uid}' is not a valid DICOM UID, but it is used as "
            "given to group the files"
        )
    if not series:
        unreadable = (
            f" ({display.listing(not_dicom)} could not be read as DICOM)"
            if not_dicom
            else ""
        )
        raise InputError(
            f"no DICOM files found among the {len(paths)} files in the folder"
            + unreadable,
            path=display.label,
            hint="Give the folder that contains the DICOM files of the CT series "
            "(for example the export from your PACS), or a NIfTI, MHA or NRRD "
            "file.",
        )
    logger.info(
        "read %d DICOM headers in %d series from %s",
        sum(s.file_count for s in series.values()),
        len(series),
        display.label,
    )
    return series


def _read_header(path: Path) -> tuple[Dataset | None, bool, str]:
    """Read one file's header without pixels.

    Returns:
        The header or None, whether it was read without a DICOM file header,
        and the reason when it could not be read.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=True), False, ""
    except InvalidDicomError:
        pass
    # pydicom raises many exception types on damaged files. Any of them means
    # that this one file is skipped, not that loading fails.
    except Exception as exc:  # noqa: BLE001
        return None, False, f"unreadable DICOM file: {exc}"
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001
        return None, False, f"not a DICOM file: {exc}"
    image_tags = ("SOPClassUID", "Modality", "ImagePositionPatient", "Rows")
    if not any(tag in header for tag in image_tags):
        return None, False, "not a DICOM file"
    return header, True, ""


def _fallback_series_key(header: Dataset) -> str:
    """Build a series key for files whose SeriesInstanceUID is empty."""
    parts = [
        str(header.get("SeriesNumber", "") or ""),
        str(header.get("SeriesDescription", "") or ""),
        str(header.get("FrameOfReferenceUID", "") or ""),
    ]
    return "no-series-uid:" + "|".join(parts)


def _classify(
    path: Path, header: Dataset, forced: bool
) -> tuple[list[SliceHeader], str]:
    """Return the slices of a usable CT image file, or none and the reason."""
    modality = str(header.get("Modality", "") or "").strip()
    sop_class = str(header.get("SOPClassUID", "") or "").strip()
    if not sop_class and "MediaStorageSOPClassUID" in getattr(header, "file_meta", {}):
        sop_class = str(header.file_meta.MediaStorageSOPClassUID)

    if modality and modality != "CT":
        return [], f"not a CT image (Modality {modality})"
    if sop_class in MULTI_FRAME_CT_STORAGE:
        try:
            return read_frame_headers(path, header, forced), ""
        except MultiFrameError as exc:
            return [], f"{MULTI_FRAME_CT_STORAGE[sop_class]} file: {exc}"
    if sop_class and sop_class != CT_IMAGE_STORAGE:
        return [], f"not a CT image (SOP class {UID(sop_class).name})"
    if not modality and not sop_class:
        return [], "neither Modality nor SOPClassUID is set"
    image_type = [str(v).upper() for v in header.get("ImageType", []) or []]
    if "LOCALIZER" in image_type:
        return [], "localizer (ImageType LOCALIZER)"
    if "ImagePositionPatient" not in header or "ImageOrientationPatient" not in header:
        return [], "no ImagePositionPatient or ImageOrientationPatient"

    try:
        position = np.array([float(v) for v in header.ImagePositionPatient])
        orientation = np.array([float(v) for v in header.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
        rows = int(header.Rows)
        columns = int(header.Columns)
        slope = float(header.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
        bits_stored = int(header.get("BitsStored", header.BitsAllocated))
    except (AttributeError, TypeError, ValueError) as exc:
        return [], f"missing or invalid geometry tags: {exc}"
    if position.shape != (3,) or orientation.shape != (6,):
        return [], "ImagePositionPatient or ImageOrientationPatient has wrong length"
    if (
        not np.all(np.isfinite(orientation))
        or min(np.linalg.norm(orientation[:3]), np.linalg.norm(orientation[3:])) < 0.5
    ):
        return [], "ImageOrientationPatient rows are not perpendicular unit vectors"
    orientation, error = normalise_orientation(orientation)
    if error > MAX_ORIENTATION_ERROR:
        return [], (
            "ImageOrientationPatient rows are not perpendicular unit vectors "
            f"(deviation {error:.2g}, above the {MAX_ORIENTATION_ERROR:g} that is "
            "repaired)"
        )
    slice_ = SliceHeader(
        path=path,
        position=position,
        orientation=orientation,
        pixel_spacing=(row_spacing, column_spacing),
        rows=rows,
        columns=columns,
        slope=slope,
        intercept=intercept,
        bits_stored=bits_stored,
        signed=int(header.get("PixelRepresentation", 0)) == 1,
        forced=forced,
        header=header,
        orientation_error=error,
    )
    return [slice_], ""


def choose_series(
    series: dict[str, SeriesFiles],
    options: IntakeOptions,
    display: FileNames,
    provenance: Provenance,
) -> SeriesFiles:
    """Choose one series by the stated rule or the override, and record why."""
    candidates = [s for s in series.values() if s.slices]
    unusable = [s for s in series.values() if not s.slices]
    for entry in unusable:
        reasons = Counter(reason for _, reason in entry.dropped)
        reason, count = reasons.most_common(1)[0]
        if count < entry.file_count:
            reason += f" ({count} of {entry.file_count} files)"
        provenance.rejected_series.append(entry.summary(reason))

    if not candidates:
        found = "; ".join(
            f"{s.uid or '(no UID)'} '{s.description}': {r['reason']}"
            for s, r in zip(unusable, provenance.rejected_series, strict=True)
        )
        raise InputError(
            f"no CT series found. The DICOM series in the folder are: {found}",
            path=display.label,
            hint="Give the folder of an axial chest CT series. MR, PET, dose "
            "reports, secondary captures and localizers cannot be analysed.",
        )

    if options.series_uid is not None:
        chosen = _find_requested_series(series, options.series_uid, display)
        provenance.selection_rule = (
            f"series {options.series_uid} requested by IntakeOptions.series_uid "
            "(--series)"
        )
    else:
        # max() keeps the first of equal candidates, so sorting by key first
        # breaks ties in favour of the lowest SeriesInstanceUID.
        by_uid = sorted(candidates, key=lambda s: s.key)
        chosen = max(by_uid, key=lambda s: s.rank())
        provenance.selection_rule = SELECTION_RULE

    for entry in candidates:
        if entry is not chosen:
            reason = _rejection_reason(entry, chosen, options)
            provenance.rejected_series.append(entry.summary(reason))

    _warn_if_mixed(list(series.values()), provenance)
    if chosen.modalities.get("", 0):
        provenance.warn(
            f"{chosen.modalities['']} files of the chosen series have no Modality "
            "and were taken as CT because their SOP class is CT Image Storage"
        )
    provenance.series_uid = chosen.uid or None
    provenance.series_description = chosen.description or None
    logger.info(
        "chose series %s '%s' (%d slices) of %d series",
        chosen.uid or chosen.key,
        chosen.description,
        chosen.slice_count(),
        len(series),
    )
    return chosen


def _warn_if_mixed(entries: list[SeriesFiles], provenance: Provenance) -> None:
    """Warn when the folder mixes patients or studies; no identifier is recorded."""
    patients: set[str] = set()
    studies: set[str] = set()
    for entry in entries:
        if not entry.slices:
            continue
        header = entry.slices[0].header
        patients.add(str(header.get("PatientID", "")))
        studies.add(str(header.get("StudyInstanceUID", "")))
    if len(patients) > 1:
        provenance.warn(
            f"the folder holds series of {len(patients)} different patients (by "
            "PatientID); only the chosen series was analysed: check that it is "
            "the patient you meant, or give one patient's folder"
        )
    elif len(studies) > 1:
        provenance.warn(
            f"the folder holds series of {len(studies)} studies of the patient; "
            "only the chosen series was analysed: check that it is the study "
            "you meant"
        )


def _find_requested_series(
    series: dict[str, SeriesFiles], requested: str, display: FileNames
) -> SeriesFiles:
    """Return the series whose UID or key is ``requested``, or raise."""
    entry = series.get(requested.strip())
    if entry is not None and entry.slices:
        return entry
    if entry is not None:
        reason = Counter(r for _, r in entry.dropped).most_common(1)[0][0]
        raise InputError(
            f"the requested series {requested} cannot be used: {reason}",
            path=display.label,
            hint="Choose a CT series, or leave out the series override to let the "
            "selection rule choose.",
        )
    available = "; ".join(
        f"{s.uid or s.key} ({s.slice_count()} slices, "
        f"'{s.description or 'no description'}')"
        for s in series.values()
        if s.slices
    )
    raise InputError(
        f"the requested series {requested} was not found in the folder. The CT series "
        f"found are: {available}",
        path=display.label,
        hint="Pass one of the listed SeriesInstanceUIDs, or leave out the series "
        "override to let the selection rule choose.",
    )


def _rejection_reason(
    entry: SeriesFiles, chosen: SeriesFiles, options: IntakeOptions
) -> str:
    """Explain in words why the rule did not choose ``entry``."""
    if options.series_uid is not None:
        return "not the requested series"
    if chosen.orientation_name() == "axial" and entry.orientation_name() != "axial":
        return f"{entry.orientation_name()} slices, and axial series are preferred"
    if entry.slice_count() != chosen.slice_count():
        return (
            f"fewer slices ({entry.slice_count()}) than the chosen series "
            f"({chosen.slice_count()})"
        )
    if entry.spacing_mm() != chosen.spacing_mm():
        return (
            f"thicker slice spacing ({format_mm(entry.spacing_mm())} mm) than the "
            f"chosen series ({format_mm(chosen.spacing_mm())} mm)"
        )
    return "same orientation, slice count and spacing, and a lower UID was chosen"
