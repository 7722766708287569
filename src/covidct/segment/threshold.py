"""The threshold backend: lungs, heart and lesions without a trained model."""

from __future__ import annotations

import logging

from covidct.intake.volume import CTVolume
from covidct.segment.heart import segment_heart
from covidct.segment.lesions import LesionOptions, segment_lesions
from covidct.segment.lungs import LungOptions, segment_lungs
from covidct.segment.orientation import Reorientation
from covidct.segment.result import Segmentation

__all__ = ["segment_threshold"]

logger = logging.getLogger(__name__)


def segment_threshold(
    volume: CTVolume,
    lung_options: LungOptions | None = None,
    lesion_options: LesionOptions | None = None,
) -> Segmentation:
    """Segment lungs, heart and lesions of a chest CT by HU rules and morphology.

    The volume is reoriented to the canonical orientation for the work and the
    masks are returned on the input grid.

    Args:
        volume: The CT in HU.
        lung_options: Settings of the lung rule.
        lesion_options: Settings of the lesion rule.

    Returns:
        The masks on the volume's grid, with warnings about absent organs.
    """
    reorientation = Reorientation.from_geometry(volume.direction, volume.spacing)
    hu = reorientation.to_canonical(volume.hu)
    spacing = reorientation.spacing

    logger.info("segmenting the lungs")
    lungs, warnings = segment_lungs(hu, spacing, lung_options)
    logger.info("segmenting the heart")
    heart = segment_heart(hu, spacing, lungs)
    if lungs.any() and not heart.any():
        warnings.append("no heart found between the lungs; heart values are missing")
    logger.info("segmenting the lesions")
    lesions = segment_lesions(hu, spacing, lungs, lesion_options)

    return Segmentation(
        lungs=reorientation.from_canonical(lungs),
        heart=reorientation.from_canonical(heart),
        lesions=reorientation.from_canonical(lesions),
        method="threshold",
        warnings=warnings,
    )
