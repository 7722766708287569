"""Recognise intensities that are not plain HU and correct the certain cases.

Two corrections run on every volume before ``check_hu``:

- Padding: scanners write a constant far below air (often -2048 or -3024 HU)
  into the corners outside the reconstructed field of view. Those voxels hold
  no measurement, so they are set to -1024 HU (air) and counted as outside
  the body.
- Stored values offset by +1024: integer data whose air peak lies just above 0
  and whose soft-tissue peak lies near 1024 are stored scanner values whose
  rescale (HU = value - 1024) was lost, for example a NIfTI file without its
  ``scl_inter``. 1024 is subtracted.

Any other non-HU scale (windowed 8-bit exports, a lost slope) is ambiguous and
left to ``check_hu`` to reject.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from covidct.intake.volume import CTVolume

__all__ = [
    "IntensityPeaks",
    "correct_stored_offset",
    "find_intensity_peaks",
    "replace_padding",
]

logger = logging.getLogger(__name__)

# HU of air outside the field of view after ``replace_padding``, and the usual
# lowest value that scanners write for real measurements.
AIR_HU = -1024

# A value below AIR_HU counts as padding only when at least this fraction of
# the voxels contain it. Genuine low values in the lungs (calibration noise down
# to about -1100 HU) are spread over many values, each on few voxels. The
# corners outside the inscribed circle of a square image are 21 % of it.
MIN_PADDING_FRACTION = 0.001

# Fraction of the padding voxels that must be connected, within their axial
# slice, to the image border. Below it the constant value sits inside the
# body and is left alone.
MIN_PADDING_OUTSIDE_FRACTION = 0.99

# The offset that DICOM CT stores most often (RescaleIntercept -1024).
STORED_OFFSET = 1024

# Stored values with a +1024 offset put air (-1000 HU outside the body, about
# -850 HU in the lungs) at 8 to 224 and fat or soft tissue (-120 to 60 HU) at
# 824 to 1174. An air peak below 8 would mean air was clipped at 0, which
# suggests a smaller offset such as 1000, so the mapping is not certain.
OFFSET_AIR_RANGE = (8.0, 224.0)
OFFSET_TISSUE_RANGE = (824.0, 1174.0)

# Two histogram peaks must lie at least this far apart to count as separate
# tissues (in the units of the data; HU for a CT).
PEAK_SEPARATION = 300.0
HISTOGRAM_BINS = 512


@dataclass(frozen=True)
class IntensityPeaks:
    """The two main peaks of a volume's histogram, in the units of the data.

    Attributes:
        low: Centre of the lower peak (air or lung in a CT).
        high: Centre of the higher peak (fat or soft tissue in a CT), or None
            when the histogram has one peak only.
    """

    low: float
    high: float | None

    def describe(self) -> str:
        """Name both peaks in words, e.g. ``histogram peaks at 31 and 904``."""
        if self.high is None:
            return f"one histogram peak at {_format_value(self.low)}"
        return (
            f"histogram peaks at {_format_value(self.low)} and "
            f"{_format_value(self.high)}"
        )


def _format_value(value: float) -> str:
    """Format whole units for HU-sized values and 3 digits for small ones."""
    return f"{value:.0f}" if abs(value) >= 10 else f"{value:.3g}"


def sample_voxels(values: np.ndarray) -> np.ndarray:
    """Return every 2nd slice and every 4th row and column, as float32."""
    sample = values[::2, ::4, ::4] if values.ndim == 3 else values
    return np.asarray(sample, dtype=np.float32).ravel()


def find_intensity_peaks(values: np.ndarray) -> IntensityPeaks:
    """Find the two highest histogram peaks that lie far enough apart.

    Args:
        values: Volume in any units, any shape. A subsample is used.

    Returns:
        The lower and the higher of the two peaks. The second peak is the
        highest bin at least ``PEAK_SEPARATION`` from the first one, or the
        closest to that when the data span less.
    """
    sample = sample_voxels(values)
    lowest, highest = float(sample.min()), float(sample.max())
    if highest <= lowest:
        return IntensityPeaks(low=lowest, high=None)
    bins = HISTOGRAM_BINS
    if np.issubdtype(values.dtype, np.integer):
        # Integer data over a narrow range (8-bit exports) get one bin per value.
        bins = max(2, min(HISTOGRAM_BINS, int(highest - lowest) + 1))
    counts, edges = np.histogram(sample, bins=bins, range=(lowest, highest))
    centres = (edges[:-1] + edges[1:]) / 2
    smoothed = np.convolve(counts, np.ones(3) / 3, mode="same")
    first = int(np.argmax(smoothed))
    separation = min(PEAK_SEPARATION, (highest - lowest) / 3)
    far = np.abs(centres - centres[first]) >= separation
    if not far.any() or smoothed[far].max() <= 0:
        return IntensityPeaks(low=float(centres[first]), high=None)
    second = int(np.flatnonzero(far)[np.argmax(smoothed[far])])
    low, high = sorted((float(centres[first]), float(centres[second])))
    return IntensityPeaks(low=low, high=high)


def replace_padding(volume: CTVolume) -> None:
    """Set the padding outside the field of view to air, with a warning.

    Padding is the minimum of the volume when it lies below -1024 HU, fills
    at least 0.1 % of the voxels and is connected, within each axial slice,
    to the image border. Only those border-connected voxels change. Values
    below -1024 HU inside the body (noise in the lungs) stay as they are.
    The volume's array is changed in place and the padding value and voxel
    count go to ``provenance.details``.
    """
    hu = volume.hu
    lowest = float(hu.min())
    if lowest >= AIR_HU:
        return
    padded = hu == hu.dtype.type(lowest)
    count = int(np.count_nonzero(padded))
    if count < MIN_PADDING_FRACTION * hu.size:
        logger.debug("minimum %.0f HU on %d voxels only: not padding", lowest, count)
        return

    outside = _connected_to_border(padded)
    outside_count = int(np.count_nonzero(outside))
    if outside_count < MIN_PADDING_OUTSIDE_FRACTION * count:
        logger.debug(
            "minimum %.0f HU on %d voxels, only %d at the image border: not padding",
            lowest,
            count,
            outside_count,
        )
        return

    hu[outside] = AIR_HU
    volume.provenance.details["padding_hu"] = lowest
    volume.provenance.details["padding_voxels"] = outside_count
    volume.provenance.warn(
        f"{outside_count} voxels ({100 * outside_count / hu.size:.1f} % of the "
        f"volume) at the image border contain the padding value {lowest:g} HU, "
        "which marks no measurement outside the scanner's field of view; they "
        f"were set to {AIR_HU} HU (air) for the analysis"
    )


def _connected_to_border(mask: np.ndarray) -> np.ndarray:
    """Keep the parts of ``mask`` connected, in their axial slice, to the border."""
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    labels, _ = ndi.label(mask, structure=in_plane)
    border = np.concatenate(
        [
            labels[:, 0, :].ravel(),
            labels[:, -1, :].ravel(),
            labels[:, :, 0].ravel(),
            labels[:, :, -1].ravel(),
        ]
    )
    border_labels = np.unique(border[border > 0])
    return np.isin(labels, border_labels)


def correct_stored_offset(volume: CTVolume) -> bool:
    """Subtract 1024 from stored scanner values that lost their rescale.

    The correction runs only when the mapping is certain. The data must be
    integers, with no value below 0 and some above 255 (so not an 8-bit
    export). The air peak must lie at 8 to 224 and the fat or soft-tissue
    peak at 824 to 1174, where a CT stored with RescaleIntercept -1024 has
    them.

    NOTE: a stored offset of 1000 instead of 1024 would give the same peaks
    24 units lower. With the air peak of a chest CT at -1000 HU it then sits
    at 0 and is rejected here, but a scan without air outside the body could
    be shifted by 24 HU.

    Returns:
        Whether the values were corrected. The warning names the peaks.
    """
    hu = volume.hu
    if not np.issubdtype(hu.dtype, np.integer):
        return False
    lowest, highest = int(hu.min()), int(hu.max())
    if lowest < 0 or highest <= 255:
        return False
    peaks = find_intensity_peaks(hu)
    if peaks.high is None:
        return False
    air_ok = OFFSET_AIR_RANGE[0] <= peaks.low <= OFFSET_AIR_RANGE[1]
    tissue_ok = OFFSET_TISSUE_RANGE[0] <= peaks.high <= OFFSET_TISSUE_RANGE[1]
    if not (air_ok and tissue_ok):
        return False

    shifted = hu.astype(np.int32) - STORED_OFFSET
    if shifted.max() <= np.iinfo(np.int16).max:
        volume.hu = shifted.astype(np.int16)
    else:
        volume.hu = shifted.astype(np.float32)
    volume.provenance.details["hu_offset_subtracted"] = STORED_OFFSET
    volume.provenance.warn(
        f"the values run from {lowest} to {highest} with {peaks.describe()}, "
        f"where stored scanner values offset by +{STORED_OFFSET} put air and "
        f"soft tissue, so they are not Hounsfield units (HU): {STORED_OFFSET} "
        f"was subtracted from every voxel (HU = value - {STORED_OFFSET})"
    )
    return True
