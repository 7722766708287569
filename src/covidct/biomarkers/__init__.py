"""biomarkers stage."""
