"""The threshold backend on single 8-bit axial slices, for images without HU.

Exported slices (PNG or JPEG figures, contrast-equalised sets) keep the
anatomy but not the Hounsfield scale. This module rebuilds a pseudo-HU scale
for each slice and then runs the HU rules of :mod:`covidct.segment.lungs` and
:mod:`covidct.segment.lesions` unchanged on a one-slice volume ``[1, y, x]``.

Calibration, per slice:

1. Otsu's threshold splits the grey-level histogram into a dark class (air,
   aerated lung) and a bright class (soft tissue, fat, bone).
2. The air level is the mode of the smoothed histogram below the threshold,
   the soft-tissue level the mode above it. When the modes lie closer than
   ``min_peak_gap`` (a flat histogram), the medians of the two classes
   replace them.
3. Grey levels map linearly to pseudo-HU so that the air level lands on
   ``air_hu`` (default -850 HU, aerated lung) and the soft-tissue level on
   ``tissue_hu`` (default +40 HU, muscle and blood).

The mapping is exact only for a linear window that saturates neither peak.
Contrast equalisation (CLAHE) or a window that clips soft tissue to white
bends it, so the pseudo-HU bands of GGO and consolidation are approximations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from covidct.segment.lesions import LesionOptions, segment_lesions
from covidct.segment.lungs import LungOptions, segment_lungs

__all__ = [
    "SliceCalibration",
    "SliceMasks",
    "SliceOptions",
    "calibrate_slice",
    "segment_slice",
    "to_pseudo_hu",
]

logger = logging.getLogger(__name__)

# One slice is treated as a slab this thick, so that the volume thresholds of
# the HU rules (ml) read as areas: 1 ml is 1,000 mm² of slice.
SLAB_MM = 1.0


@dataclass(frozen=True)
class SliceCalibration:
    """Grey levels of one 8-bit slice pinned to known HU values.

    Attributes:
        air_level: Grey level of the dark histogram peak (air, aerated lung).
        tissue_level: Grey level of the bright histogram peak (soft tissue).
        valid: False when the two levels are too close for the slice to be
            mapped to pseudo-HU.
    """

    air_level: float
    tissue_level: float
    valid: bool


@dataclass
class SliceOptions:
    """Settings of the 2D adaptation.

    Attributes:
        pixel_mm: In-plane pixel size (mm). 8-bit exports rarely carry it, so
            it is an assumption of the caller.
        air_hu: Pseudo-HU given to the air peak (HU).
        tissue_hu: Pseudo-HU given to the soft-tissue peak (HU).
        min_peak_gap: Smallest distance between the two peaks, in grey
            levels, for the calibration to be valid.
        smoothing_mm: Standard deviation of the Gaussian filter applied to the
            pseudo-HU before the rules (mm). It replaces the block
            averaging of the HU rules, which does nothing at this pixel size,
            and damps the texture that contrast equalisation adds.
        pad_with_tissue: Surround the slice with a frame of soft tissue before
            segmenting. Use it for images cropped inside the body, where
            lungs touch the image border and would otherwise be taken as
            outside air.
        lungs: Settings of the lung rule, with sizes restated for one slice.
        lesions: Settings of the lesion rule, with sizes restated for one
            slice.
    """

    pixel_mm: float = 1.4
    air_hu: float = -850.0
    tissue_hu: float = 40.0
    min_peak_gap: float = 20.0
    smoothing_mm: float = 1.4
    pad_with_tissue: bool = False
    # Volumes in ml restated as slice areas through SLAB_MM: a lung component
    # covers at least 500 mm², a lesion at least 20 mm². The HU bounds were
    # tuned on ma20-8bit patients 1-10 (files 0000-1246), whose CLAHE lifts
    # aerated lung to a median of about -630 pseudo-HU: air below -300
    # (not -500), GGO above -400 (not -750), consolidation up to 600 (not 200).
    lungs: LungOptions = field(
        default_factory=lambda: LungOptions(air_hu=-300.0, min_component_ml=0.5)
    )
    lesions: LesionOptions = field(
        default_factory=lambda: LesionOptions(
            ggo_min_hu=-400.0, consolidation_max_hu=600.0, min_lesion_ml=0.02
        )
    )


@dataclass
class SliceMasks:
    """Masks of one slice, on the grid of the input image.

    Attributes:
        lungs: uint8, 0 outside, 1 right lung, 2 left lung, assuming the image
            shows the patient's right on its left side (radiological view).
        lesions: uint8, 0 no lesion, 1 GGO, 2 consolidation.
        calibration: The grey levels pinned to HU.
        pseudo_hu: The slice mapped to pseudo-HU (float32).
    """

    lungs: np.ndarray
    lesions: np.ndarray
    calibration: SliceCalibration
    pseudo_hu: np.ndarray


def calibrate_slice(image: np.ndarray, min_peak_gap: float = 20.0) -> SliceCalibration:
    """Find the air and soft-tissue peaks of an 8-bit slice.

    Args:
        image: 2D array of grey levels 0..255.
        min_peak_gap: Smallest peak distance (grey levels) accepted as two
            separate classes.

    Returns:
        The two levels. ``valid`` is False when even the class medians lie
        closer than ``min_peak_gap``, as in a blank or one-class image.
    """
    values = np.asarray(image, dtype=np.float64).ravel()
    if values.size == 0 or values.max() - values.min() < min_peak_gap:
        return SliceCalibration(0.0, 0.0, valid=False)
    histogram = np.bincount(np.clip(values, 0, 255).astype(np.int64), minlength=256)
    # The smoothing keeps the peak search off spikes at single grey levels.
    smooth = ndi.gaussian_filter1d(histogram.astype(np.float64), sigma=3.0)
    threshold = int(threshold_otsu(values))
    air_level = float(np.argmax(smooth[: threshold + 1]))
    tissue_level = float(threshold + 1 + np.argmax(smooth[threshold + 1 :]))
    if tissue_level - air_level < min_peak_gap:
        # A flat histogram (strong equalisation) has no clear modes next to
        # the threshold, so the medians of the two Otsu classes replace them.
        air_level = float(np.median(values[values <= threshold]))
        tissue_level = float(np.median(values[values > threshold]))
    valid = tissue_level - air_level >= min_peak_gap
    return SliceCalibration(air_level, tissue_level, valid=valid)


def to_pseudo_hu(
    image: np.ndarray,
    calibration: SliceCalibration,
    air_hu: float = -850.0,
    tissue_hu: float = 40.0,
) -> np.ndarray:
    """Map grey levels linearly to pseudo-HU through the two calibration peaks.

    Args:
        image: 2D array of grey levels.
        calibration: A valid calibration of this image.
        air_hu: HU of the air peak.
        tissue_hu: HU of the soft-tissue peak.

    Returns:
        A float32 array of pseudo-HU, same shape as ``image``.

    Raises:
        ValueError: If the calibration is not valid.
    """
    if not calibration.valid:
        raise ValueError(
            "cannot map the slice to pseudo-HU: its histogram has no separate "
            "air and soft-tissue peaks"
        )
    scale = (tissue_hu - air_hu) / (calibration.tissue_level - calibration.air_level)
    offset = air_hu - scale * calibration.air_level
    return (np.asarray(image, dtype=np.float32) * scale + offset).astype(np.float32)


def segment_slice(
    image: np.ndarray,
    options: SliceOptions | None = None,
    lungs: np.ndarray | None = None,
) -> SliceMasks:
    """Segment lungs and lesions on one 8-bit axial slice by the HU rules.

    Args:
        image: 2D array of grey levels 0..255, axial, anterior at the top.
        options: Calibration and rule settings.
        lungs: A lung mask used in place of the lung rule, such as a reference
            mask. It has the shape of ``image``, with 0 outside, 1 right lung
            and 2 left lung.

    Raises:
        ValueError: If ``image`` is not 2D or ``lungs`` has another shape.

    Returns:
        The masks on the grid of ``image``; both are empty when the slice
        cannot be calibrated.
    """
    options = options or SliceOptions()
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected one 2D slice, got an array of shape {image.shape}")
    if lungs is not None and lungs.shape != image.shape:
        raise ValueError(
            f"lung mask shape {lungs.shape} differs from image shape {image.shape}"
        )
    empty = np.zeros(image.shape, dtype=np.uint8)
    calibration = calibrate_slice(image, options.min_peak_gap)
    if not calibration.valid:
        logger.warning(
            "slice not calibrated (air level %.0f, tissue level %.0f): "
            "masks left empty",
            calibration.air_level,
            calibration.tissue_level,
        )
        pseudo_hu = np.full(image.shape, np.nan, dtype=np.float32)
        return SliceMasks(empty, empty.copy(), calibration, pseudo_hu)

    pseudo_hu = to_pseudo_hu(image, calibration, options.air_hu, options.tissue_hu)
    pad = 0
    volume = pseudo_hu
    if options.smoothing_mm > 0:
        volume = ndi.gaussian_filter(volume, options.smoothing_mm / options.pixel_mm)
    if options.pad_with_tissue:
        # A frame thicker than the closing radius, so that neither the border
        # test nor the closing reaches the image edge.
        pad = int(np.ceil(options.lungs.closing_radius_mm / options.pixel_mm)) + 4
        volume = np.pad(volume, pad, constant_values=options.tissue_hu)
    volume = volume[None]
    spacing = (options.pixel_mm, options.pixel_mm, SLAB_MM)

    if lungs is None:
        lung_volume, _ = segment_lungs(volume, spacing, options.lungs)
        lung_volume[0] = _keep_largest_per_side(lung_volume[0])
    else:
        lung_volume = np.pad(lungs.astype(np.uint8), pad)[None]
    lesions = segment_lesions(volume, spacing, lung_volume, options.lesions)[0]
    lung_slice = lung_volume[0]
    if pad:
        lung_slice = lung_slice[pad:-pad, pad:-pad]
        lesions = lesions[pad:-pad, pad:-pad]
    return SliceMasks(lung_slice, lesions, calibration, pseudo_hu)


def _keep_largest_per_side(sides: np.ndarray) -> np.ndarray:
    """Keep the largest connected component of each side label of one slice.

    A single slice has no 3D continuity to tell a lung from enclosed air (the
    gap between the back and the table, gas in the stomach), so only the
    largest region on each side stays.
    """
    result = np.zeros_like(sides)
    for side in np.unique(sides[sides > 0]):
        labels, count = ndi.label(sides == side)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        result[labels == np.argmax(sizes)] = side
    return result
