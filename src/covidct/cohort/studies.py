"""The studies of a batch: found in an input folder or listed in a CSV manifest.

An input folder is read in one of two layouts:

- ``subfolders``: each image file (NIfTI, MHA, NRRD, zip) directly in the
  folder is one study named after the file, and each subfolder is one study
  named after the subfolder. A subfolder whose DICOM files belong to several
  StudyInstanceUIDs is split into one study per UID, named
  ``<subfolder>-<StudyInstanceUID>``.
- ``dicom-tree``: every DICOM file under the folder is grouped by
  StudyInstanceUID, and each study is named after its UID.

``auto`` chooses ``dicom-tree`` when DICOM files lie directly in the folder
and ``subfolders`` otherwise. Within a study, ``covidct.analysis.analyze``
chooses the series as it does for one study.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import SimpleITK as sitk

from covidct.cohort.task import StudyTask
from covidct.errors import InputError
from covidct.intake.series import FileNames, SeriesFiles, scan_folder
from covidct.intake.volume import Provenance

__all__ = [
    "LAYOUTS",
    "MANIFEST_REQUIRED",
    "StudyTask",
    "discover_studies",
    "read_manifest",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("auto", "subfolders", "dicom-tree")

#: Columns that every manifest must have. Every other column is passed through
#: to ``cohort.csv`` unchanged.
MANIFEST_REQUIRED = ("study_id", "path")

# File endings that hold one whole study, as ``covidct.intake.load_study``
# reads them.
STUDY_FILE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".zip")

# Letters allowed in a study id, which names the study's output folder.
_STUDY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def check_study_id(study_id: str, where: str) -> str:
    """Return ``study_id`` if it can name a folder, else raise ``InputError``."""
    if not _STUDY_ID.fullmatch(study_id) or study_id.endswith("."):
        raise InputError(
            f"invalid study id '{study_id}': a study id names its output folder, so "
            "it must start with a letter or digit and contain only letters, digits, "
            "'.', '_' and '-'",
            path=where,
            hint="Rename the study (the manifest's study_id, or the folder or file).",
        )
    return study_id


def read_manifest(path: str | Path) -> tuple[list[StudyTask], list[str]]:
    """Read a CSV manifest with one study per row.

    The manifest needs the columns ``study_id`` and ``path``. A relative path is
    taken relative to the manifest's folder. Every other column (``age``,
    ``sex``, clinical values, outcomes) is kept as text and written unchanged
    to ``cohort.csv``.

    Returns:
        The studies in manifest order, and the names of the passed-through
        columns in manifest order.

    Raises:
        InputError: If the file cannot be read, a required column is missing,
            or a study id is empty, invalid or repeated.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = [name.strip() for name in reader.fieldnames or []]
            rows = [
                {
                    (key or "").strip(): (value or "").strip()
                    for key, value in row.items()
                }
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(
            f"failed to read the manifest: {error}",
            path=path,
            hint="Give a UTF-8 CSV file with a header line.",
        ) from error

    missing = [name for name in MANIFEST_REQUIRED if name not in columns]
    if missing:
        raise InputError(
            f"the manifest has no column {', '.join(missing)} (columns found: "
            f"{', '.join(columns) or 'none'})",
            path=path,
            hint="Add a header line with at least study_id and path.",
        )
    passed = [name for name in columns if name not in MANIFEST_REQUIRED]
    if "status" in passed:
        raise InputError(
            "the manifest has a column 'status', a name that cohort.csv uses for "
            "the state of each study",
            path=path,
            hint="Rename that column.",
        )
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise InputError(
            f"the manifest repeats the column(s) {', '.join(duplicated)}",
            path=path,
            hint="Give every column a distinct name.",
        )

    tasks: list[StudyTask] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        study_id = row["study_id"]
        where = f"{path}, line {line}"
        check_study_id(study_id, where)
        if study_id in seen:
            raise InputError(
                f"study id '{study_id}' appears more than once",
                path=where,
                hint="Give every study a distinct study_id.",
            )
        seen.add(study_id)
        if not row["path"]:
            raise InputError(
                f"study '{study_id}' has an empty path",
                path=where,
                hint="Give the study's DICOM folder, zip or image file.",
            )
        study_path = Path(row["path"]).expanduser()
        if not study_path.is_absolute():
            study_path = path.parent / study_path
        tasks.append(
            StudyTask(
                study_id=study_id,
                path=study_path,
                clinical={name: row.get(name, "") for name in passed},
                voxels=_estimate_voxels(study_path),
            )
        )
    if not tasks:
        raise InputError(
            "the manifest lists no study",
            path=path,
            hint="Add one line per study under the header.",
        )
    logger.info("read %d studies from the manifest %s", len(tasks), path)
    return tasks, passed


def discover_studies(folder: str | Path, layout: str = "auto") -> list[StudyTask]:
    """Find the studies in ``folder`` by the rules of this module's docstring.

    Returns:
        The studies sorted by study id.

    Raises:
        InputError: If the folder is missing, contains no study, or two
            studies get the same id.
        ValueError: If ``layout`` is not one of ``LAYOUTS``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(
            "no such folder",
            path=folder,
            hint="Give a folder of studies or a CSV manifest.",
        )
    if layout == "auto":
        loose = [p for p in folder.iterdir() if p.is_file() and _is_dicom(p)]
        layout = "dicom-tree" if loose else "subfolders"
        logger.info("reading %s as layout '%s'", folder, layout)

    if layout == "dicom-tree":
        tasks = _split_by_study_uid(folder, prefix="")
    else:
        tasks = []
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                tasks.extend(_subfolder_studies(entry))
            elif _study_file_suffix(entry) is not None:
                study_id = entry.name[: -len(_study_file_suffix(entry) or "")]
                check_study_id(study_id, str(entry))
                tasks.append(StudyTask(study_id, entry, voxels=_estimate_voxels(entry)))
            else:
                logger.warning("skipped %s: not a study folder or image file", entry)

    if not tasks:
        raise InputError(
            "the folder contains no study",
            path=folder,
            hint="Put each study in its own subfolder (or as a NIfTI, MHA, NRRD or "
            "zip file), or give a CSV manifest.",
        )
    counts: dict[str, int] = defaultdict(int)
    for task in tasks:
        counts[task.study_id] += 1
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise InputError(
            f"several studies get the same id: {', '.join(repeated)}",
            path=folder,
            hint="Rename the files or folders, or give a CSV manifest with distinct "
            "study ids.",
        )
    return sorted(tasks, key=lambda task: task.study_id)


def _subfolder_studies(folder: Path) -> list[StudyTask]:
    """Return the one study of a subfolder, or one per StudyInstanceUID."""
    check_study_id(folder.name, str(folder))
    images = [p for p in folder.iterdir() if _study_file_suffix(p) is not None]
    try:
        studies = _group_by_study_uid(folder)
    except InputError:
        # No DICOM file: a single image file is the study; anything else is
        # left to analyze, which records why it cannot be read.
        path = images[0] if len(images) == 1 else folder
        return [StudyTask(folder.name, path, voxels=_estimate_voxels(path))]
    if len(studies) == 1:
        (group,) = studies.values()
        return [StudyTask(folder.name, folder, voxels=_series_voxels(group))]
    return _split_by_study_uid(folder, prefix=f"{folder.name}-", studies=studies)


def _split_by_study_uid(
    folder: Path,
    prefix: str,
    studies: dict[str, list[SeriesFiles]] | None = None,
) -> list[StudyTask]:
    if studies is None:
        studies = _group_by_study_uid(folder)
    tasks = []
    for uid, group in sorted(studies.items()):
        files = sorted(
            {s.path for series in group for s in series.slices}
            | {path for series in group for path, _ in series.dropped}
        )
        study_id = check_study_id(prefix + _UNSAFE.sub("_", uid), str(folder))
        tasks.append(
            StudyTask(
                study_id=study_id,
                path=folder,
                files=tuple(files),
                voxels=_series_voxels(group),
            )
        )
    return tasks


def _group_by_study_uid(folder: Path) -> dict[str, list[SeriesFiles]]:
    """Read the DICOM headers under ``folder`` and group the series by study."""
    provenance = _ScanProvenance(source=str(folder), kind="dicom")
    studies: dict[str, list[SeriesFiles]] = defaultdict(list)
    with _ignore_invalid_values():
        series = scan_folder(folder, FileNames(folder, folder), provenance)
        for entry in series.values():
            if entry.slices:
                header = entry.slices[0].header
            else:
                # Unusable series (not CT, localizers) keep no header, so one
                # of their files is read again for the study UID.
                path = entry.dropped[0][0]
                header = pydicom.dcmread(path, stop_before_pixels=True)
            uid = str(header.get("StudyInstanceUID", "") or "").strip()
            studies[uid or "no-study-uid"].append(entry)
    return dict(studies)


class _ScanProvenance(Provenance):
    """Provenance that logs intake's warnings at debug level only.

    Finding the studies reads every header once more before the analysis,
    which warns about the same oddities and records them in the report.
    """

    def warn(self, message: str) -> None:
        logger.debug("while finding studies: %s", message)
        self.warnings.append(message)


@contextmanager
def _ignore_invalid_values() -> Iterator[None]:
    """Keep pydicom from warning once per file about values such as bad UIDs.

    Intake warns about them once per series when a study is analysed. This
    sets pydicom's global validation mode while it runs, as intake does.
    """
    previous = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        pydicom.config.settings.reading_validation_mode = previous


def _series_voxels(group: list[SeriesFiles]) -> int | None:
    """Estimate the voxels of the series that intake would choose."""
    usable = [s for s in group if s.slices]
    if not usable:
        return None
    chosen = max(usable, key=lambda s: s.rank())
    first = chosen.slices[0]
    return first.rows * first.columns * chosen.slice_count()


def _estimate_voxels(path: Path) -> int | None:
    """Estimate the voxels of a study from its headers, without pixel data."""
    suffix = _study_file_suffix(path)
    if path.is_dir():
        try:
            return _series_voxels(
                [s for g in _group_by_study_uid(path).values() for s in g]
            )
        except InputError:
            return None
    if suffix is None:
        return None
    if suffix == ".zip":
        # NOTE: a rough estimate that takes one byte of archive per voxel, as
        # for JPEG Lossless CT (the P002 sample: 32 MB for 35 million voxels).
        return path.stat().st_size
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    voxels = 1
    for size in reader.GetSize():
        voxels *= size
    return voxels


def _study_file_suffix(path: Path) -> str | None:
    if not path.is_file():
        return None
    name = path.name.lower()
    return next((s for s in STUDY_FILE_SUFFIXES if name.endswith(s)), None)


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            file.seek(128)
            return file.read(4) == b"DICM"
    except OSError:
        return False
