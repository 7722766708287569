"""Outcome estimate of one patient from the biomarkers of a study and patient data."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from covidct.errors import InputError
from covidct.prognosis.data import PLAUSIBLE_MAX
from covidct.prognosis.model import PrognosisModel, bundled_model_path, load_model

__all__ = ["PatientInfo", "estimate_prognosis", "load_bundled_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatientInfo:
    """Patient data that the outcome models take besides the CT.

    Attributes:
        age: Age in years.
        sex: ``"M"`` or ``"F"``.
        hypertension: Known hypertension; None if unknown.
        diabetes: Known diabetes; None if unknown.
        crp: C-reactive protein in mg/l.
        lymphocytes: Lymphocyte count in 10^9 cells/l (the same as G/l or
            thousands per µl, not a percentage of white cells).
    """

    age: float | None = None
    sex: str | None = None
    hypertension: bool | None = None
    diabetes: bool | None = None
    crp: float | None = None
    lymphocytes: float | None = None

    def __post_init__(self) -> None:
        if self.sex is not None and self.sex.upper() not in ("M", "F"):
            raise InputError(f"sex must be M or F, got {self.sex!r}")
        checks = (
            ("age", self.age, "years", PLAUSIBLE_MAX["Age"]),
            ("CRP", self.crp, "mg/l", PLAUSIBLE_MAX["CRP"]),
            (
                "lymphocyte count",
                self.lymphocytes,
                "10^9/l",
                PLAUSIBLE_MAX["Lymphocytes"],
            ),
        )
        for name, value, unit, maximum in checks:
            if value is not None and not 0 <= value <= maximum:
                raise InputError(
                    f"{name} {value:g} {unit} is outside 0 to {maximum:g} {unit}",
                    hint=f"give the {name} in {unit}"
                    + (" (a count, not a percentage)" if unit == "10^9/l" else ""),
                )

    @property
    def has_clinical(self) -> bool:
        """Whether any clinical input was given, which selects the clinical model."""
        return (
            self.crp is not None
            or self.lymphocytes is not None
            or bool(self.hypertension)
            or bool(self.diabetes)
        )

    def cohort_values(self) -> dict[str, float | None]:
        """Return the inputs under the cohort's names and codes (Sex: 1 male).

        When any clinical input is given, an absent hypertension or diabetes
        counts as 0 (no), as the command-line flags mean.
        """

        def flag(value: bool | None) -> float | None:
            if value is None:
                return 0.0 if self.has_clinical else None
            return float(value)

        return {
            "Age": self.age,
            "Sex": None if self.sex is None else float(self.sex.upper() == "M"),
            "HBP": flag(self.hypertension),
            "Diabetes": flag(self.diabetes),
            "CRP": self.crp,
            "Lymphocytes": self.lymphocytes,
        }


@functools.cache
def load_bundled_model(name: str) -> PrognosisModel:
    """Load a bundled model once per process (``"imaging"`` or ``"clinical"``)."""
    return load_model(bundled_model_path(name))


def estimate_prognosis(
    measures: Mapping[str, float | None],
    patient: PatientInfo | None,
    model: PrognosisModel | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Estimate the outcome from a study's measures and the patient's data.

    Args:
        measures: Biomarker and radiomics values under the cohort's names
            (``Disease_extent``, ``original_<class>_<feature>_<region>``).
        patient: Age, sex and optional clinical inputs.
        model: The model to use; by default the bundled ``clinical`` model when
            a clinical input is given, else the bundled ``imaging`` model.

    Returns:
        The ``prognosis`` entry of report.json and the warnings to add to the
        report. When the estimate cannot be made, the entry has ``status``
        ``"not estimated"`` and a ``reason``.
    """
    if patient is None or patient.age is None or patient.sex is None:
        given = patient or PatientInfo()
        absent = [
            name
            for name, value in (("age", given.age), ("sex", given.sex))
            if value is None
        ]
        verb = "was" if len(absent) == 1 else "were"
        return _not_estimated(
            f"the patient's {' and '.join(absent)} {verb} not given (--age, --sex), "
            "and every outcome model needs them"
        ), []
    chosen = model
    if chosen is None:
        chosen = load_bundled_model("clinical" if patient.has_clinical else "imaging")
    values = {**measures, **patient.cohort_values()}
    warnings: list[str] = []
    try:
        result = chosen.estimate(values)
    except ValueError as error:
        if model is not None or chosen.name == "imaging":
            return _not_estimated(_missing_reason(error)), []
        # The bundled clinical model may need a lesion feature that is
        # undefined for this study; the imaging model may not.
        fallback = load_bundled_model("imaging")
        try:
            result = fallback.estimate(values)
        except ValueError as fallback_error:
            return _not_estimated(_missing_reason(fallback_error)), []
        warnings.append(
            f"the {chosen.name} outcome model could not be used ({error}), so "
            "the imaging model, which ignores the clinical inputs, gave the "
            "estimate"
        )
    warnings += [
        f"prognosis input {item['feature']} = {item['value']:.4g} is far outside the "
        f"training cohort (z = {item['z_score']:+.1f}, range "
        f"{item['training_min']:.4g} to {item['training_max']:.4g}), so the outcome "
        "estimate is less reliable"
        for item in result["out_of_range"]
    ]
    if result["imputed_inputs"]:
        warnings.append(
            "prognosis inputs set to the training median because they were not "
            f"given: {', '.join(result['imputed_inputs'])}"
        )
    for message in warnings:
        logger.warning(message)
    return {"status": "estimated", **result}, warnings


def _missing_reason(error: ValueError) -> str:
    return (
        f"{error}. The radiomics stage computes them, so run the analysis "
        "with radiomics. A feature of an empty region, such as the lesions of "
        "a lung without lesions, stays undefined"
    )


def _not_estimated(reason: str) -> dict[str, Any]:
    return {
        "status": "not estimated",
        "reason": f"The outcome could not be estimated: {reason}.",
    }
