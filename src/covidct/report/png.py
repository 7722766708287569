"""A minimal PNG encoder for the report images, built on numpy and zlib."""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = ["encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# PNG colour type by number of channels: 0 grey, 2 RGB, 6 RGBA.
_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}

# Filter type 2 ("Up") stores each row as its difference to the row above,
# which compresses CT slices and mostly transparent overlays well.
_FILTER_UP = 2


def _chunk(kind: bytes, data: bytes) -> bytes:
    checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)


def encode_png(pixels: np.ndarray, compression: int = 6) -> bytes:
    """Encode an 8-bit image as PNG.

    Args:
        pixels: uint8 array of shape ``(height, width)`` (grey),
            ``(height, width, 3)`` (RGB) or ``(height, width, 4)`` (RGBA).
        compression: zlib level, 0 (none) to 9 (smallest, slowest).

    Returns:
        The bytes of the PNG file.

    Raises:
        ValueError: If the array is not uint8 or has another shape than these.
    """
    if pixels.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, got {pixels.dtype}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[-1]
    if pixels.ndim not in (2, 3) or channels not in _COLOUR_TYPES:
        raise ValueError(
            f"PNG pixels must have shape (h, w), (h, w, 3) or (h, w, 4), "
            f"got {pixels.shape}"
        )
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"PNG image must not be empty, got shape {pixels.shape}")

    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    filtered = np.empty((height, 1 + width * channels), dtype=np.uint8)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 1:] = rows[0]
    # uint8 subtraction wraps modulo 256, as the Up filter requires.
    filtered[1:, 1:] = rows[1:] - rows[:-1]

    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        [
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), compression)),
            _chunk(b"IEND", b""),
        ]
    )
