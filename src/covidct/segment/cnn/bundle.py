"""The set of trained networks that make up the ensemble, as listed in its card.

A bundle is a folder with ``ensemble.json`` and the weight files it names.
``ensemble.json`` is the machine-readable part of the model card, and
``MODEL_CARD.md`` beside it is the readable part. The JSON lists the members,
their network specification, their weight in the probability average and the
SHA-256 of each weight file. It also sets the test-time flips and the lesion
probability threshold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from covidct.errors import InputError
from covidct.segment.cnn.network import build_network

__all__ = [
    "DEFAULT_BUNDLE",
    "EnsembleMember",
    "ModelBundle",
    "load_bundle",
    "sha256_of",
]

#: Folder of the weights shipped with covidct.
DEFAULT_BUNDLE = Path(str(resources.files("covidct.segment.cnn") / "models"))

CARD_FILE = "ensemble.json"
FORMAT_VERSION = 1


def sha256_of(path: Path) -> str:
    """Return the hexadecimal SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class EnsembleMember:
    """One trained network of the ensemble.

    Attributes:
        name: Short name used in logs and reports.
        network: The network in evaluation mode, on the CPU.
        context_slices: Neighbouring slices on each side that it reads.
        weight: Weight of its probabilities in the ensemble average.
    """

    name: str
    network: torch.nn.Module
    context_slices: int
    weight: float


@dataclass
class ModelBundle:
    """The members and inference settings of one ensemble.

    Attributes:
        path: Folder the bundle was read from.
        members: The networks, in the card's order.
        flip_left_right: Also average each member over the mirrored slices.
        lesion_threshold: Lesion probability above which a lung pixel is
            lesion (0.5 when the card gives none).
        card: The parsed ``ensemble.json``.
    """

    path: Path
    members: list[EnsembleMember]
    flip_left_right: bool
    lesion_threshold: float
    card: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.name))


def _bundle_error(path: Path, problem: str, hint: str | None = None) -> InputError:
    return InputError(
        problem,
        path=path,
        hint=hint
        or "Give a folder written by `covidct train-segmentation`, or reinstall "
        "covidct to restore the bundled weights.",
    )


def load_bundle(path: Path | None = None) -> ModelBundle:
    """Read a bundle, verify every weight file's SHA-256 and build the networks.

    Args:
        path: Bundle folder; the weights shipped with covidct by default.

    Raises:
        InputError: A missing or malformed card, a missing weight file, a
            checksum that differs from the card's, or weights that do not fit
            the specified network.
    """
    path = DEFAULT_BUNDLE if path is None else Path(path)
    card_path = path / CARD_FILE
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bundle_error(card_path, "no ensemble card found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise _bundle_error(
            card_path, f"the ensemble card could not be read: {exc}"
        ) from exc
    if card.get("format") != FORMAT_VERSION or not card.get("members"):
        raise _bundle_error(
            card_path,
            f"the ensemble card has format {card.get('format')!r} and "
            f"{len(card.get('members') or [])} members; this covidct reads format "
            f"{FORMAT_VERSION} with at least one member",
        )

    members = []
    for entry in card["members"]:
        weights_path = path / entry["file"]
        if not weights_path.is_file():
            raise _bundle_error(
                weights_path, "a weight file named in the card is missing"
            )
        actual = sha256_of(weights_path)
        if actual != entry["sha256"]:
            raise _bundle_error(
                weights_path,
                f"the weight file's SHA-256 is {actual}, but the card lists "
                f"{entry['sha256']}; the file is damaged or was replaced",
            )
        network = build_network(entry["spec"])
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise _bundle_error(
                weights_path,
                f"the weights do not fit the network in the card: {str(exc)[:200]}",
            ) from exc
        network.eval()
        members.append(
            EnsembleMember(
                name=str(entry["name"]),
                network=network,
                context_slices=int(entry["spec"].get("context_slices", 0)),
                weight=float(entry.get("weight", 1.0)),
            )
        )
    return ModelBundle(
        path=path,
        members=members,
        flip_left_right=bool(card.get("flip_left_right", False)),
        lesion_threshold=float(card.get("lesion_threshold", 0.5)),
        card=card,
    )
