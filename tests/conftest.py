"""Shared fixtures: the real CT data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """Return a path under the shared data folder, skipping the test when absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"real data not found at {path}: clone the repository beside a "
            "'shared/data' folder to run this test"
        )
    return path


@pytest.fixture(scope="session")
def p002_dir() -> Path:
    """DICOM folder of the COVID-19 series P002 (133 slices, JPEG Lossless)."""
    return shared_path("covid-ct-md", "P002")


@pytest.fixture(scope="session")
def normal001_dir() -> Path:
    """DICOM folder of the normal series normal001 (154 slices, JPEG Lossless)."""
    return shared_path("covid-ct-md", "normal001")


@pytest.fixture(scope="session")
def p002_volume(p002_dir: Path):
    """The P002 series read by intake, shared by the tests of later stages."""
    from covidct.intake import load_study

    return load_study(p002_dir)


@pytest.fixture(scope="session")
def p002_segmentation(p002_volume):
    """The threshold segmentation of P002."""
    from covidct.segment.threshold import segment_threshold

    return segment_threshold(p002_volume)
