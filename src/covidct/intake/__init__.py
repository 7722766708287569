"""Intake: read a chest CT study, check it and return one volume in HU.

``load_study`` accepts a DICOM folder, a zip of a DICOM series, or a NIfTI,
MHA or NRRD file, and raises ``covidct.errors.InputError`` for inputs that
cannot be analysed.
"""

from covidct.intake.checks import check_hu
from covidct.intake.options import IntakeOptions
from covidct.intake.readers import load_study
from covidct.intake.series import SELECTION_RULE
from covidct.intake.volume import CTVolume, Provenance

__all__ = [
    "SELECTION_RULE",
    "CTVolume",
    "IntakeOptions",
    "Provenance",
    "check_hu",
    "load_study",
]
