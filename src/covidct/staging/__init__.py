"""Severity stage from the extent of lung involvement."""

from covidct.staging.extent import ExtentStage, stage_extent

__all__ = ["ExtentStage", "stage_extent"]
