"""The CT volume that every stage after intake works on."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

__all__ = ["CTVolume", "Provenance"]

logger = logging.getLogger(__name__)


@dataclass
class Provenance:
    """Where a volume came from and what intake did to it.

    Attributes:
        source: The path the user gave.
        kind: "dicom", "dicom-zip", "nifti", "mha", "nrrd".
        series_uid: SeriesInstanceUID of the chosen DICOM series, if any.
        series_description: SeriesDescription of the chosen series, if any.
        selection_rule: The rule that chose the series, in words.
        rejected_series: One entry per series not used, with the reason.
        skipped_files: Files that could not be read, with the reason.
        warnings: Every automatic correction and oddity, in words, in order.
        details: Further facts (transfer syntax, manufacturer, kernel, ...).
    """

    source: str
    kind: str
    series_uid: str | None = None
    series_description: str | None = None
    selection_rule: str | None = None
    rejected_series: list[dict[str, Any]] = field(default_factory=list)
    skipped_files: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        """Log an automatic correction or oddity and record it for the report."""
        logger.warning(message)
        self.warnings.append(message)


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units with its patient-space geometry.

    The array is indexed ``[z, y, x]`` (slice, row, column), as SimpleITK's
    ``GetArrayFromImage`` gives it. Geometry follows ITK and DICOM conventions in
    the LPS patient frame: ``spacing`` and ``origin`` are ``(x, y, z)`` in mm and
    ``direction`` is the 3 x 3 matrix whose columns are the directions of the
    x, y and z array axes.

    Attributes:
        hu: Intensities in HU, int16 or float32, shape ``(nz, ny, nx)``.
        spacing: Voxel size ``(x, y, z)`` in mm.
        origin: Patient position of voxel ``[0, 0, 0]`` in mm (LPS).
        direction: Direction cosines, shape ``(3, 3)``.
        provenance: Source, choices and warnings of intake.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    provenance: Provenance

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(nz, ny, nx)``."""
        return tuple(int(n) for n in self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in ml."""
        return float(np.prod(self.spacing)) / 1000.0

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """Wrap ``array`` (default: the HU array) in a SimpleITK image on this grid."""
        data = self.hu if array is None else array
        if data.shape != self.hu.shape:
            raise ValueError(
                f"array shape {data.shape} differs from the volume shape "
                f"{self.hu.shape}"
            )
        if data.dtype == bool:
            data = data.astype(np.uint8)
        image = sitk.GetImageFromArray(data)
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection([float(d) for d in np.asarray(self.direction).ravel()])
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, provenance: Provenance) -> CTVolume:
        """Build a volume from a 3D SimpleITK image whose values are already HU."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            hu=sitk.GetArrayFromImage(image),
            spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=np.array(image.GetDirection(), dtype=float).reshape(3, 3),
            provenance=provenance,
        )
