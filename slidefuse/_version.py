"""The package version, in one place (`slidefuse.__version__` and report.json read it from here)."""

__version__ = "0.1.0"
