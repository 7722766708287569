"""covidct: quantify, stage and predict COVID-19 pneumonia on chest CT."""

__version__ = "0.1.0"
__all__ = ["__version__"]
