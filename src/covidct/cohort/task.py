"""One study of a batch, as the coordinator sends it to a worker.

This module imports only the standard library, so that a worker process can
unpickle tasks before numpy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["StudyTask"]


@dataclass(frozen=True)
class StudyTask:
    """One study to analyse.

    Attributes:
        study_id: Name of the study and of its folder in the output folder.
        path: File or folder given to ``analyze``. When ``files`` is set, the
            folder that contains them.
        files: The study's DICOM files when the study is part of a folder that
            contains other studies too, and empty when ``path`` is the whole study.
        clinical: Manifest columns other than ``study_id`` and ``path``,
            as written in the manifest.
        voxels: Estimated rows x columns x slices of the volume that will be
            analysed, or None when the headers did not tell.
    """

    study_id: str
    path: Path
    files: tuple[Path, ...] = ()
    clinical: dict[str, str] = field(default_factory=dict)
    voxels: int | None = None
