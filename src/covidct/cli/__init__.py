"""The ``covidct`` command line: parse, call the stages, print."""

from covidct.cli.main import main

__all__ = ["main"]
