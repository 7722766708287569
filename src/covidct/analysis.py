"""The whole analysis of one study: intake, segmentation, biomarkers, stage, report.

This module ties the stages together for the command line and for batch runs;
each stage stays usable alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covidct import __version__
from covidct.biomarkers.volumes import Biomarker, compute_biomarkers
from covidct.intake import IntakeOptions, load_study
from covidct.intake.volume import CTVolume
from covidct.segment.anatomy import check_anatomy
from covidct.segment.result import LABELS, Segmentation
from covidct.segment.threshold import segment_threshold
from covidct.staging import ExtentStage, stage_extent

if TYPE_CHECKING:
    from covidct.prognosis.predict import PatientInfo

__all__ = [
    "STAGES",
    "AnalysisOptions",
    "AnalysisResult",
    "analyze",
    "segment_study",
    "write_analysis",
]

logger = logging.getLogger(__name__)

#: Stages in the order they run; progress callbacks receive these names.
STAGES = ("intake", "segmentation", "biomarkers", "radiomics", "staging", "report")


@dataclass
class AnalysisOptions:
    """Settings of one analysis.

    Attributes:
        intake: Series choice and intake limits.
        radiomics: Whether to extract the 535 PyRadiomics features (the slowest
            stage; the other biomarkers do not need it).
        workers: Processes for the radiomics regions.
        patient: Age, sex and clinical inputs of the outcome estimate; without
            age and sex the report states that the outcome was not estimated.
        method: Segmentation backend, "cnn" (the network ensemble) or
            "threshold" (the HU rules).
        model: Bundle folder of the ensemble; the bundled weights when None.
    """

    intake: IntakeOptions = field(default_factory=IntakeOptions)
    radiomics: bool = True
    workers: int = 1
    method: str = "cnn"
    model: Path | None = None
    patient: PatientInfo | None = None


@dataclass
class AnalysisResult:
    """Everything one analysis produced, before it is written."""

    volume: CTVolume
    segmentation: Segmentation
    biomarkers: dict[str, Biomarker]
    radiomics: dict[str, float | None]
    stage: ExtentStage
    warnings: list[str]
    timings_s: dict[str, float]
    prognosis: dict[str, Any] | None = None
    reliability: dict[str, Any] | None = None

    def report(self) -> dict[str, Any]:
        """Build the report dict that ``covidct.report.write_outputs`` writes."""
        provenance = self.volume.provenance
        volume = self.volume
        return {
            "software": {"name": "covidct", "version": __version__},
            "input": {
                "source": provenance.source,
                "kind": provenance.kind,
                "series_uid": provenance.series_uid,
                "series_description": provenance.series_description,
                "selection_rule": provenance.selection_rule,
                "rejected_series": provenance.rejected_series,
                "skipped_files": provenance.skipped_files,
                "shape": list(volume.shape),
                "spacing_mm": list(volume.spacing),
                "slice_count": volume.shape[0],
                "origin_mm": list(volume.origin),
                "direction": [float(v) for v in volume.direction.ravel()],
                "details": provenance.details,
            },
            "segmentation": {
                "method": self.segmentation.method,
                "labels": {str(value): name for value, name in LABELS.items()},
            },
            "biomarkers": {
                name: {"value": marker.value, "unit": marker.unit}
                for name, marker in self.biomarkers.items()
                if not _is_zone(name)
            },
            "zones": {
                name: {"value": marker.value, "unit": marker.unit}
                for name, marker in self.biomarkers.items()
                if _is_zone(name)
            },
            "radiomics": self.radiomics,
            "stage": self.stage.to_dict(),
            "reliability": self.reliability,
            "prognosis": self.prognosis,
            "warnings": self.warnings,
            "timings_s": {
                name: round(value, 3) for name, value in self.timings_s.items()
            },
        }


def analyze(
    path: str | Path,
    options: AnalysisOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> AnalysisResult:
    """Analyse one study, from the file or folder to biomarkers and stage.

    Args:
        path: DICOM folder, DICOM zip, NIfTI, MHA or NRRD file.
        options: Analysis settings.
        progress: Called with each stage name from ``STAGES`` as it starts.

    Raises:
        InputError: If the study cannot be read or fails an intake check.
    """
    options = options or AnalysisOptions()
    timings: dict[str, float] = {}

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        if progress is not None:
            progress(name)
        start = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - start
        logger.info("%s took %.1f s", name, timings[name])

    with stage("intake"):
        volume = load_study(path, options.intake)
    with stage("segmentation"):
        segmentation = segment_study(volume, options)
        anatomy = check_anatomy(volume, segmentation)
    with stage("biomarkers"):
        biomarkers = compute_biomarkers(volume, segmentation)
    radiomics: dict[str, float | None] = {}
    with stage("radiomics"):
        if options.radiomics:
            from covidct.biomarkers.radiomics import extract_radiomics

            radiomics = extract_radiomics(volume, segmentation, workers=options.workers)
    with stage("staging"):
        extent = biomarkers["Disease_extent"].value
        stage_result = stage_extent(0.0 if extent is None else extent)
        prognosis, prognosis_warnings = _estimate_prognosis(
            biomarkers, radiomics, options.patient
        )

    warnings = list(volume.provenance.warnings)
    for message in segmentation.warnings:
        logger.warning(message)
        warnings.append(message)
    if extent is None:
        message = "no lung was segmented, so the extent and stage are not meaningful"
        logger.warning(message)
        warnings.append(message)
    if not options.radiomics:
        warnings.append("radiomics features were not computed (--no-radiomics)")
    warnings += prognosis_warnings
    return AnalysisResult(
        volume=volume,
        segmentation=segmentation,
        biomarkers=biomarkers,
        radiomics=radiomics,
        stage=stage_result,
        warnings=warnings,
        timings_s=timings,
        prognosis=prognosis,
        reliability=anatomy.to_dict(),
    )


def segment_study(volume: CTVolume, options: AnalysisOptions) -> Segmentation:
    """Run the segmentation backend that ``options.method`` names."""
    if options.method == "threshold":
        return segment_threshold(volume)
    if options.method != "cnn":
        raise ValueError(f"unknown segmentation method {options.method!r}")
    from covidct.segment.cnn.bundle import load_bundle
    from covidct.segment.cnn.inference import segment_cnn

    return segment_cnn(volume, load_bundle(options.model))


def _estimate_prognosis(
    biomarkers: dict[str, Biomarker],
    radiomics: dict[str, float | None],
    patient: PatientInfo | None,
) -> tuple[dict[str, Any], list[str]]:
    """Run the bundled outcome model on the study's measures."""
    from covidct.prognosis.predict import estimate_prognosis

    measures = {name: marker.value for name, marker in biomarkers.items()}
    measures.update(radiomics)
    return estimate_prognosis(measures, patient)


def write_analysis(
    result: AnalysisResult,
    out_dir: str | Path,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write the report files of an analysis into ``out_dir``.

    Raises:
        OutputError: If the folder cannot be created or written.
    """
    from covidct.report import write_outputs, write_report_json

    if progress is not None:
        progress("report")
    start = time.perf_counter()
    paths = write_outputs(
        Path(out_dir), result.volume, result.segmentation, result.report()
    )
    result.timings_s["report"] = time.perf_counter() - start
    logger.info("report took %.1f s", result.timings_s["report"])
    # The time of the report stage is known only now: write the JSON again.
    write_report_json(Path(out_dir), result.report())
    return paths


def _is_zone(name: str) -> bool:
    return name.endswith("_third")
