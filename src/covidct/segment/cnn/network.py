"""Build the segmentation networks from the specification in the model card."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNet

__all__ = ["CLASSES", "build_network", "default_spec"]

#: Output channels of every member: the network separates lung from lesion,
#: and the lesion is split into ground-glass opacity and consolidation by HU
#: afterwards (see ``covidct.segment.cnn.inference``).
CLASSES = ("background", "lung", "lesion")


def default_spec(context_slices: int = 0) -> dict[str, Any]:
    """Return the network specification used for the bundled members.

    Args:
        context_slices: Neighbouring slices on each side given as extra input
            channels (0 for a 2D member, 1 for a 2.5D member of 3 slices).
    """
    return {
        "architecture": "monai.networks.nets.UNet",
        "spatial_dims": 2,
        "in_channels": 1 + 2 * context_slices,
        "out_channels": len(CLASSES),
        "channels": [8, 16, 32, 64, 128],
        "strides": [2, 2, 2, 2],
        "num_res_units": 1,
        "context_slices": context_slices,
    }


def build_network(spec: dict[str, Any]) -> torch.nn.Module:
    """Create an untrained residual UNet from a specification dictionary.

    Raises:
        ValueError: The specification names another architecture or misses a
            key.
    """
    if spec.get("architecture") != "monai.networks.nets.UNet":
        raise ValueError(
            f"unsupported network architecture {spec.get('architecture')!r}; "
            "this version of covidct builds monai.networks.nets.UNet only"
        )
    try:
        return UNet(
            spatial_dims=int(spec["spatial_dims"]),
            in_channels=int(spec["in_channels"]),
            out_channels=int(spec["out_channels"]),
            channels=tuple(int(c) for c in spec["channels"]),
            strides=tuple(int(s) for s in spec["strides"]),
            num_res_units=int(spec["num_res_units"]),
        )
    except KeyError as exc:
        raise ValueError(f"network specification misses the key {exc}") from exc
