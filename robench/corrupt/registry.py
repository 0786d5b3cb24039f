"""The corruption registry: every corruption is registered once, next to its function, and every list of corruption
names (the suite list, the report order, the reference backend's replayable set) is derived from here.

    from robench.corrupt import corruption

    @corruption("invert", family="digital")
    def invert(x, p, draws, **options):     # x (B, 3, H, W) in [0, 1]; p = the suite's value at this severity
        return 1 - p * x

A registered name may then be used in a suite TOML (`[corruptions.invert]` with `severity = [...]`), in
`corrupt_batch` and in `robench eval --corruptions my-suite.toml`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from robench.errors import RobenchError

FAMILIES = ("noise", "blur", "weather", "digital", "other")
# what a corruption's fidelity is established against (docs/corruptions.md)
VALIDATION = ("imagecorruptions", "hendrycks", "none")


@dataclass(frozen=True)
class CorruptionDef:
    name: str
    fn: Callable
    family: str = "other"            # the category of Hendrycks & Dietterich (a suite TOML may override it)
    order: int = 0                   # display order (report tables, suite listings)
    reference: bool = False          # imagecorruptions has it (backend "reference")
    replayable: bool = False         # the reference's own noise can be replayed through randomness.Replay (fidelity tests)
    validated: str = "none"          # imagecorruptions | hendrycks (an oracle of the original definition) | none
    builtin: bool = False            # one of the 19 of ImageNet-C / CIFAR-10-C
    version: int = 1                 # bump when the function's output changes: part of every result cell's identity
    extra: bool = False              # one of the 4 extras of ImageNet-C (not in the 15-corruption benchmark set)


_REGISTRY: dict[str, CorruptionDef] = {}


def corruption(name: str | None = None, *, family: str = "other", order: int | None = None, reference: bool = False,
               replayable: bool = False, validated: str = "none", version: int = 1, extra: bool = False,
               _builtin: bool = False):
    """Decorator registering fn(x, p, draws, **options) -> corrupted x under `name` (default: the function's name).

    extra=True marks a corruption that a suite without a `benchmark` list leaves out of its benchmark set (the 4
    extras of ImageNet-C). Registering a name twice with a different function is an error (re-importing the same
    module is not)."""
    if family not in FAMILIES:
        raise RobenchError(f"corruption family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if validated not in VALIDATION:
        raise RobenchError(f"validated must be one of {', '.join(VALIDATION)}, got {validated!r}")

    def register(fn):
        n = name or fn.__name__
        old = _REGISTRY.get(n)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise RobenchError(f"corruption '{n}' is already registered (by {old.fn.__module__}.{old.fn.__qualname__})")
        o = order if order is not None else (old.order if old else 1000 + len(_REGISTRY))
        _REGISTRY[n] = CorruptionDef(n, fn, family, o, reference, replayable, validated, _builtin, version, extra)
        return fn
    return register


def unregister(name: str):
    """Remove a registered (non built-in) corruption, e.g. at the end of a test."""
    d = _REGISTRY.get(name)
    if d is not None and d.builtin:
        raise RobenchError(f"corruption '{name}' is built in and cannot be unregistered")
    _REGISTRY.pop(name, None)


def registered() -> list[CorruptionDef]:
    """Every registered corruption in display order."""
    return sorted(_REGISTRY.values(), key=lambda d: (d.order, d.name))


def names(builtin_only: bool = False) -> tuple[str, ...]:
    return tuple(d.name for d in registered() if d.builtin or not builtin_only)


def get(name: str) -> CorruptionDef | None:
    return _REGISTRY.get(name)

