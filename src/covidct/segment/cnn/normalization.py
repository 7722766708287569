"""The one input normalisation of the segmentation networks.

The networks learn from ``ma20-8bit``-style slices: each axial slice resized to
256 x 256 with bicubic interpolation, min-max scaled to 0..255 per slice, then
contrast-equalised with CLAHE (OpenCV, clip limit 7, 8 x 8 tiles). Every input
goes through the same steps before it reaches a network:

- a CT in HU is padded to a square with air, clipped to ``HU_RANGE`` (so
  padding values such as -2048 or -3024 and metal do not set the scale), and
  then takes the steps above;
- an 8-bit slice from another source (an unknown window) takes the steps above;
- an ``ma20-8bit`` slice already went through them and is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "HU_RANGE",
    "INPUT_SIZE",
    "SquareFrame",
    "equalize",
    "hu_slices_to_inputs",
    "normalize_8bit",
]

#: Side of the square slices the networks see, in pixels.
INPUT_SIZE = 256

#: HU window applied before the per-slice min-max scaling. Air and lung sit at
#: the low end; 2000 HU keeps cortical bone but cuts metal.
HU_RANGE = (-1024.0, 2000.0)

CLAHE_CLIP_LIMIT = 7.0
CLAHE_TILES = (8, 8)


def equalize(image: np.ndarray) -> np.ndarray:
    """Min-max scale one 2D slice to 0..255 and apply CLAHE; return uint8."""
    values = image.astype(np.float32, copy=False)
    low = float(values.min())
    high = float(values.max())
    if high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(values)
    as_uint8 = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES)
    return clahe.apply(as_uint8)


def normalize_8bit(image: np.ndarray) -> np.ndarray:
    """Bring an 8-bit slice of unknown window to the networks' input form.

    Args:
        image: 2D grey-level slice (any size; colour images must be converted
            to grey first).

    Returns:
        uint8 array of shape ``(INPUT_SIZE, INPUT_SIZE)``.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2D grey-level slice, got shape {image.shape}")
    resized = cv2.resize(
        image.astype(np.float32),
        (INPUT_SIZE, INPUT_SIZE),
        interpolation=cv2.INTER_CUBIC,
    )
    return equalize(resized)


@dataclass(frozen=True)
class SquareFrame:
    """Padding of a rectangular slice to a square before resizing.

    Attributes:
        shape: In-plane shape ``(ny, nx)`` of the original slices.
        side: Side of the padded square, in original pixels.
        offset: Rows and columns ``(dy, dx)`` added before the original.
    """

    shape: tuple[int, int]
    side: int
    offset: tuple[int, int]

    @classmethod
    def for_shape(cls, shape: tuple[int, int]) -> SquareFrame:
        side = max(shape)
        return cls(
            shape=shape,
            side=side,
            offset=((side - shape[0]) // 2, (side - shape[1]) // 2),
        )

    def crop(self, square: np.ndarray) -> np.ndarray:
        """Cut the original in-plane extent out of arrays ``[..., side, side]``."""
        dy, dx = self.offset
        return square[..., dy : dy + self.shape[0], dx : dx + self.shape[1]]


def hu_slices_to_inputs(hu: np.ndarray) -> tuple[np.ndarray, SquareFrame]:
    """Turn axial HU slices into network inputs.

    Args:
        hu: Volume in HU, indexed ``[z, y, x]`` in canonical orientation (x
            toward the patient's left, y posterior), as the training slices are
            displayed.

    Returns:
        uint8 array ``(nz, INPUT_SIZE, INPUT_SIZE)`` and the padding frame that
        maps network outputs back to the slices.
    """
    frame = SquareFrame.for_shape((hu.shape[1], hu.shape[2]))
    inputs = np.empty((hu.shape[0], INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)
    dy, dx = frame.offset
    square = np.full((frame.side, frame.side), HU_RANGE[0], dtype=np.float32)
    for index in range(hu.shape[0]):
        square[dy : dy + hu.shape[1], dx : dx + hu.shape[2]] = np.clip(
            hu[index], *HU_RANGE
        )
        resized = cv2.resize(
            square, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_CUBIC
        )
        inputs[index] = equalize(resized)
    return inputs, frame
