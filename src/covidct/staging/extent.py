"""Extent categories and CT grades of COVID-19 pneumonia.

The categories are those of the French Society of Radiology used by Chassagnon
et al. (Medical Image Analysis 67, 2021): none (0 %), minimal (under 10 %),
moderate (10-25 %), extensive (25-50 %), severe (50-75 %) and critical (75 % and
over). The CT-0 to CT-4 grade is the "CT 0-4" scale of the MosMedData release
(Morozov et al., medRxiv 2020.05.20.20100362): CT-0 no lesion, CT-1 under 25 %,
CT-2 25-50 %, CT-3 50-75 %, CT-4 75 % and over. A boundary value belongs to the
higher category (exactly 25 % is extensive and CT-2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["ExtentStage", "stage_extent"]

# Lower bound (%, inclusive), label, name, CT grade.
_CATEGORIES: tuple[tuple[float, str, str, int], ...] = (
    (75.0, "75 % and over", "critical", 4),
    (50.0, "50-75 %", "severe", 3),
    (25.0, "25-50 %", "extensive", 2),
    (10.0, "10-25 %", "moderate", 1),
    (0.0, "under 10 %", "minimal", 1),
)


@dataclass(frozen=True)
class ExtentStage:
    """The severity stage of one study.

    Attributes:
        extent_percent: Lesion volume as a percentage of lung volume.
        category: The extent range, e.g. "10-25 %".
        category_name: none, minimal, moderate, extensive, severe or critical.
        ct_grade: 0 to 4.
        ct_grade_name: "CT-0" to "CT-4".
    """

    extent_percent: float
    category: str
    category_name: str
    ct_grade: int
    ct_grade_name: str

    def to_dict(self) -> dict[str, object]:
        """Return the stage as a plain dict for JSON."""
        return asdict(self)


def stage_extent(extent_percent: float) -> ExtentStage:
    """Stage a study from its extent.

    Args:
        extent_percent: 100 x lesion volume / lung volume, in 0..100.

    Raises:
        ValueError: If the extent is missing, negative or over 100.
    """
    if not 0.0 <= extent_percent <= 100.0:
        raise ValueError(f"extent must lie in 0..100 %, got {extent_percent!r}")
    if extent_percent == 0.0:
        return ExtentStage(0.0, "0 %", "none", 0, "CT-0")
    for lower, label, name, grade in _CATEGORIES:
        if extent_percent >= lower:
            return ExtentStage(extent_percent, label, name, grade, f"CT-{grade}")
    raise AssertionError("unreachable: the last category starts at 0 %")
