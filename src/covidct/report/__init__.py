"""Report files of one study: JSON, CSV, label map, and a self-contained HTML page.

``write_outputs(out_dir, volume, segmentation, report)`` writes into ``out_dir``:

- ``report.json``: the report dict, indented, with NaN and infinity as null.
- ``biomarkers.csv``: a header line and one data line (``biomarker_row``), so
  that the rows of many studies can be stacked under one header.
- ``segmentation.nii.gz``: the label map of ``Segmentation.label_map()`` on the
  exact grid of the CT (spacing, origin and direction).
- ``segmentation.json``: the label values with their names and colours, and the
  segmentation method.
- ``report.html``: one page with the stage, the anatomical checks, warnings,
  images, biomarkers, input provenance, timings and radiomics, which loads no
  other file.

The report dict, built by the pipeline, has this shape (values may be numpy
numbers, and any measured value may be None)::

    {
      "software": {"name": "covidct", "version": "0.1.0"},
      "input": {
        "source": str, "kind": "dicom", "series_uid": str | None,
        "series_description": str | None, "selection_rule": str | None,
        "rejected_series": [dict, ...],   # one per series not used, with reason
        "skipped_files": [dict, ...],     # one per unreadable file, with reason
        "shape": [nz, ny, nx], "spacing_mm": [x, y, z], "slice_count": nz,
        "origin_mm": [x, y, z],           # LPS, mm
        "direction": [9 floats],          # row-major, columns are the x, y, z axes
      },
      "segmentation": {"method": str, "labels": {"1": "right lung", ...}},
      "biomarkers": {key: {"value": float | None, "unit": str}, ...},
      "zones": None or {key: {"value": float | None, "unit": str}, ...},
      "radiomics": {feature: float | None, ...},   # unitless
      "stage": {"extent_percent": float, "category": str, "category_name": str,
                "ct_grade": int, "ct_grade_name": str},
      "reliability": None or {            # covidct.segment.anatomy.check_anatomy
        "values_reliable": bool, "lungs_complete": bool,
        "orientation_consistent": bool, "reasons": [str, ...],
        "measurements": {name: float | str | None, ...},
      },
      "prognosis": None or {key: value or {"value": ..., "unit": ...}, ...},
      "warnings": [str, ...],
      "timings_s": {stage: seconds, ...},
    }

Units (ml, %, HU, mm) belong to the biomarker entries; the CSV row keeps only
the values.
"""

from covidct.report.table import STAGE_FIELDS, biomarker_row
from covidct.report.writer import (
    OUTPUT_FILES,
    check_output_folder,
    write_outputs,
    write_report_json,
)

__all__ = [
    "OUTPUT_FILES",
    "STAGE_FIELDS",
    "biomarker_row",
    "check_output_folder",
    "write_outputs",
    "write_report_json",
]
