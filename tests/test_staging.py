"""Extent categories and CT grades at and around every boundary."""

from __future__ import annotations

import pytest

from covidct.staging import stage_extent


@pytest.mark.parametrize(
    ("extent", "name", "grade"),
    [
        (0.0, "none", 0),
        (0.01, "minimal", 1),
        (9.99, "minimal", 1),
        (10.0, "moderate", 1),
        (24.99, "moderate", 1),
        (25.0, "extensive", 2),
        (49.99, "extensive", 2),
        (50.0, "severe", 3),
        (74.99, "severe", 3),
        (75.0, "critical", 4),
        (100.0, "critical", 4),
    ],
)
def test_stage_boundaries(extent, name, grade):
    stage = stage_extent(extent)
    assert stage.category_name == name
    assert stage.ct_grade == grade
    assert stage.ct_grade_name == f"CT-{grade}"


@pytest.mark.parametrize("extent", [-0.1, 100.1, float("nan")])
def test_stage_rejects_invalid_extent(extent):
    with pytest.raises(ValueError, match="extent"):
        stage_extent(extent)
