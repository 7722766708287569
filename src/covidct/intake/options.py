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
    """

    series_uid: str | None = None
    max_unreadable_fraction: float = 0.1
    min_slices: int = 10
    allow_gaps: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_unreadable_fraction <= 1.0:
            raise ValueError(
                "max_unreadable_fraction must lie between 0 and 1, got "
                f"{self.max_unreadable_fraction}"
            )
        if self.min_slices < 1:
            raise ValueError(f"min_slices must be at least 1, got {self.min_slices}")
