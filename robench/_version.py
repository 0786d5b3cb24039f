"""The package version, at the bottom of the layering: lower modules read it here (stores, checkpoints, reports)
without importing the `robench` package, whose `__init__` reaches up to the API. pyproject.toml reads it too."""

__version__ = "0.1.0"
