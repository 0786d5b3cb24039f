"""robench: robustness benchmarks for image classifiers and attention variants (QUEST, Elliptical, QKNorm...)."""

__version__ = "0.1.0"

from robench.errors import RobenchError  # noqa: E402,F401
