"""Corruption engine: the 19 ImageNet-C / CIFAR-10-C corruptions as batched ops on the images' device (backend
"torch": torch code on GPUs; on the CPU, PIL / OpenCV per image where the reference is one such call), or
imagecorruptions-imaug per image in worker processes (backend "reference"). Corruptions are registered with
@corruption (registry.py); any registered name may be used in a suite TOML (suite.py).

This package only hands names on: corrupt_batch / apply live in batch.py, suites in suite.py, the registry in
registry.py, the corruptions themselves in corruptions.py (torch ops in ops.py, JPEG in jpeg.py), the
imagecorruptions backend in reference.py and `robench corrupt IMG` in render.py.
"""

from __future__ import annotations

from robench.corrupt import corruptions  # noqa: F401  (registers the 19 built-ins before any lookup)
from robench.corrupt import ops, registry  # noqa: F401
from robench.corrupt.batch import BACKENDS, apply, corrupt_batch
from robench.corrupt.registry import corruption, registered
from robench.corrupt.suite import CORRUPTIONS, SEVERITIES, CorruptionSuite, get_suite

__all__ = ["corrupt_batch", "apply", "get_suite", "CorruptionSuite", "CORRUPTIONS", "SEVERITIES", "BACKENDS",
           "corruption", "registered", "registry", "ops"]
