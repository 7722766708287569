"""Settings of the intake stage."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IntakeOptions"]


@dataclass
class IntakeOptions:
    """Settings that change how a study is read and checked.

    Attributes:
        series_uid: SeriesInstanceUID of the DICOM series to use, in place of the
            automatic choice (the command line's ``--series UID``).
        max_unreadable_fraction: Largest fraction of the chosen series' files,
            from 0 to 1, whose pixels may fail to decode before loading fails.
        min_slices: Minimum number of slices in a volume.
        allow_gaps: When true, a series with missing slices or uneven spacing
            is resampled along the slice axis to its nominal spacing with
            linear interpolation, and a warning lists the gaps. When false,
            such a series raises an ``InputError``.
        min_extent_mm: Minimum extent of the volume along z in mm, counted as
            the number of slices times the slice spacing. Thinner slabs are
            rejected because they cannot contain both lungs.
        max_memory_gb: Memory in GB (10^9 bytes) that reading and analysing
            the CT may use, compared with an estimate from the DICOM headers
            before any pixel is decoded. None means the memory that the
            operating system reports as available when the study is read.
        frame: Volume to read from a 4D NIfTI or MHA file, numbered from 0
            (the command line's ``--frame N``). None rejects 4D files with
            more than one volume.
    """

    series_uid: str | None = None
    max_unreadable_fraction: float = 0.1
    min_slices: int = 10
    allow_gaps: bool = False
    min_extent_mm: float = 50.0
    max_memory_gb: float | None = None
    frame: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_unreadable_fraction <= 1.0:
            raise ValueError(
                "max_unreadable_fraction must lie between 0 and 1, got "
                f"{self.max_unreadable_fraction}"
            )
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be at least 1, got {self.min_slices}")
        if self.min_extent_mm < 0.0:
            raise ValueError(
                f"min_extent_mm must not be negative, got {self.min_extent_mm}"
            )
        if self.max_memory_gb is not None and self.max_memory_gb <= 0.0:
            raise ValueError(
                f"max_memory_gb must be positive, got {self.max_memory_gb}"
            )
        if self.frame is not None and self.frame < 0:
            raise ValueError(f"frame must be 0 or more, got {self.frame}")
