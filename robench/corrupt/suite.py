"""Corruption suites: which corruptions, their categories, severity parameters and AlexNet errors (for mCE).

Suites are TOML files (corruptions/imagenet-c.toml, imagenet-c-extra.toml, cifar10-c.toml, or a user path):

    name = "imagenet-c"; params = "imagenet"; alexnet_clean_err = 0.435
    [corruptions.gaussian_noise]
    category = "noise"; alexnet_err = 0.886428; severity = [0.08, 0.12, 0.18, 0.26, 0.38]

`benchmark = [...]` names the suite's benchmark set (shipped: the 15 of ImageNet-C / CIFAR-10-C); without it, every
corruption not registered as extra. The others are category "extra" (reported apart, never in the headline means).
A user suite is cached by path and text (an edited file is loaded again) and must not reuse a shipped suite's name
with other values (refused: results would be labelled as the shipped suite's).

A user suite may list `modules = ["my_corruptions.py"]` (paths relative to the suite file, or module names): they are
imported first, so the corruptions they register (@robench.corrupt.corruption) can be used from the command line.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from robench.corrupt import registry
from robench.errors import RobenchError, suggest
from robench.suites import is_suite_path, parse_suite, read_suite, suite_names

# The 19 built-in corruptions in the canonical order of hendrycks/robustness (15 benchmark + 4 extra), derived from
# the registry (robench/corrupt/registry.py); check_corruption accepts any registered name, built in or not.
CORRUPTIONS = registry.names(builtin_only=True)
SEVERITIES = (1, 2, 3, 4, 5)
# Where a corruption missing from a suite takes its parameters from, per parameter family.
FAMILY_SUITES = {"imagenet": ("imagenet-c", "imagenet-c-extra"), "cifar": ("cifar10-c",)}


@dataclass
class CorruptionSuite:
    name: str
    params: str                      # parameter family: "imagenet" or "cifar"
    corruptions: list[str]           # ordered
    table: dict[str, dict] = field(repr=False, default_factory=dict)  # per corruption: category, severity, ...
    alexnet_clean_err: float | None = None
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    benchmark: list[str] | None = None  # the benchmark set (None: every corruption not registered as extra)
    source: str = ""                 # where it was loaded from (shipped: "<name>.toml", else the path as given)

    def is_benchmark(self, name: str) -> bool:
        """Whether `name` is in the suite's benchmark set (the 15 of ImageNet-C / CIFAR-10-C for shipped suites;
        `benchmark = [...]` in the TOML): headline accuracy, family columns and mCE average over these only."""
        if self.benchmark is not None:
            return name in self.benchmark
        d = registry.get(name)
        return not (d and d.extra)

    def family(self, name: str) -> str:
        """The suite file's category of `name` (noise, blur, weather, digital...), else the registered family."""
        d = registry.get(name)
        return self._entry(name).get("category", d.family if d else "other")

    def category(self, name: str) -> str:
        """What results are grouped by: "extra" outside the benchmark set, else the family."""
        return self.family(name) if self.is_benchmark(name) else "extra"

    def alexnet_err(self, name: str) -> float | None:
        """AlexNet error for `name` averaged over severities (ImageNet-C mCE normaliser), or None (extras)."""
        v = self._entry(name).get("alexnet_err")
        return None if v is None else float(v)

    def severity_params(self, name: str, severity: int):
        """The parameter value(s) of `name` at `severity` (1..5), exactly as written in the suite file."""
        check_severity(severity)
        return self._entry(name)["severity"][severity - 1]

    def identity(self, name: str) -> dict:
        """Every value that defines the images of `name` under this suite, for a result cell's hash: the parameter
        family, all five severity values and the options as resolved (never the suite's name, which a user file
        may share with a shipped suite), and the implementation's version."""
        entry = self._entry(name)
        d = registry.get(name)
        return {"corruption": name, "params": self.params, "severity_values": entry["severity"],
                "options": self.options(name), "impl": f"{d.fn.__module__}.{d.fn.__qualname__}@{d.version}"}

    def options(self, name: str) -> dict:
        """Extra per-corruption keys (e.g. frost's texture_scale)."""
        return {k: v for k, v in self._entry(name).items() if k not in ("category", "alexnet_err", "severity")}

    def _entry(self, name: str) -> dict:
        if name in self.table:
            return self.table[name]
        check_corruption(name)
        for other in FAMILY_SUITES.get(self.params, ()):
            if other != self.name and name in (s := get_suite(other)).table:
                return s.table[name]
        raise RobenchError(f"corruption '{name}' is not in suite '{self.name}'"
                           + suggest(name, self.corruptions) + f"; it has: {', '.join(self.corruptions)}")


def check_corruption(name: str) -> str:
    """`name` if it is a registered corruption (built in or registered with @corruption), else RobenchError."""
    if registry.get(name) is None:
        known = registry.names()
        raise RobenchError(f"unknown corruption '{name}'" + suggest(name, known) + f"; known: {', '.join(known)}"
                           + ". A new corruption is registered with @robench.corrupt.corruption(name, family=...) "
                           "before its suite is used")
    return name


def check_severity(severity) -> int:
    """The severity as an int (numpy / torch integers accepted); anything but 1..5 -> RobenchError."""
    import numbers

    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or int(severity) not in SEVERITIES:
        raise RobenchError(f"severity must be an integer in 1..5, got {severity!r}")
    return int(severity)


# Loaded suites, by what defines them: ("shipped", name) or (resolved path, sha256 of the file's text). Editing a
# user suite file therefore loads it again; a path never shares an entry with a shipped suite's name.
_cache: dict[tuple, CorruptionSuite] = {}
# Compatibility: a user suite loaded from a path can be found by its (non-shipped) name afterwards, the latest loaded
# file of that name. Result cells never rely on it: they carry `identity()`, and callers pass suite objects.
_by_name: dict[str, CorruptionSuite] = {}


def get_suite(name_or_path) -> CorruptionSuite:
    """A corruption suite by name (imagenet-c, imagenet-c-extra, cifar10-c), by TOML path (validated; loaded again
    whenever the file's text changes) or as it is (a CorruptionSuite). A user file named like a shipped suite is
    refused unless its values are the shipped ones."""
    if isinstance(name_or_path, CorruptionSuite):
        return name_or_path
    if not isinstance(name_or_path, (str, PathLike)):
        raise RobenchError(f"a corruption suite is a name, a TOML path or a CorruptionSuite, got {name_or_path!r}")
    key_text = str(name_or_path)
    if not is_suite_path(key_text):
        if ("shipped", key_text) in _cache:
            return _cache[("shipped", key_text)]
        if key_text in _by_name and key_text not in suite_names("corruptions"):
            return _by_name[key_text]
    text, where = read_suite("corruptions", key_text)
    user = is_suite_path(key_text)
    key = (str(Path(key_text).resolve()), hashlib.sha256(text.encode()).hexdigest()) if user else ("shipped", key_text)
    if key in _cache:
        return _cache[key]
    suite = _build(parse_suite("corruptions", text, where), where, key_text, user)
    if user and suite.name in suite_names("corruptions"):
        shipped = get_suite(suite.name)
        if _values(suite) != _values(shipped):
            raise RobenchError(f"corruption suite {where} is named '{suite.name}' like a shipped suite but has other "
                               "values: give it its own `name`")
    _cache[key] = suite
    if user:
        _by_name[suite.name] = suite
    return suite


def _values(s: CorruptionSuite) -> tuple:
    return s.params, s.corruptions, s.table, s.benchmark, s.alexnet_clean_err


def _build(data: dict, where: str, name_or_path: str, user: bool) -> CorruptionSuite:
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise RobenchError(f"corruption suite {where}: name must be a non-empty string, got {name!r}")
    params = data.get("params", "imagenet")
    if params not in FAMILY_SUITES:
        raise RobenchError(f"corruption suite {where}: params must be 'imagenet' or 'cifar', got {params!r}")
    modules = data.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise RobenchError(f"corruption suite {where}: modules must be a list of strings")
    for module in modules:  # Python files / modules registering the suite's own corruptions
        _import_corruptions(module, name_or_path)
    table = data.get("corruptions", {})
    if not isinstance(table, dict) or not table or not all(isinstance(e, dict) for e in table.values()):
        raise RobenchError(f"corruption suite {where} defines no [corruptions.<name>] tables")
    table = {c: dict(e) for c, e in table.items()}
    for c, entry in table.items():
        check_corruption(c)
        _check_entry(where, c, entry)
        if "severity" not in entry:  # a user suite may omit `severity` to reuse the family's parameters
            table[c] = entry = {**_family_entry(params, c), **entry}
        if user:
            _check_shape(where, c, entry["severity"], params)
    benchmark = data.get("benchmark")
    if benchmark is None:
        benchmark = [c for c in table if not registry.get(c).extra]
    elif not isinstance(benchmark, list) or any(c not in table for c in benchmark):
        raise RobenchError(f"corruption suite {where}: benchmark must list corruptions of the suite, got {benchmark!r}")
    clean = data.get("alexnet_clean_err")
    if clean is not None and not _is_number(clean):
        raise RobenchError(f"corruption suite {where}: alexnet_clean_err must be a number, got {clean!r}")
    return CorruptionSuite(name=name, params=params, corruptions=list(table), table=table, alexnet_clean_err=clean,
                           benchmark=[c for c in table if c in benchmark], source=where)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _shape(v):
    """None for a number, the length for a list of numbers, False for anything else."""
    if _is_number(v):
        return None
    if isinstance(v, list) and v and all(_is_number(e) for e in v):
        return len(v)
    return False


def _check_entry(where: str, c: str, entry: dict):
    key = f"corruptions.{c}"
    sev = entry.get("severity")
    if sev is not None:
        if not isinstance(sev, list) or len(sev) != 5:
            raise RobenchError(f"corruption suite {where}: {key}.severity must list 5 values (one per severity), got "
                               f"{sev!r}")
        shapes = [_shape(v) for v in sev]
        if False in shapes or len(set(shapes)) != 1:
            raise RobenchError(f"corruption suite {where}: {key}.severity must hold 5 numbers or 5 lists of numbers "
                               f"of one length, got {sev!r}")
    if "alexnet_err" in entry and not _is_number(entry["alexnet_err"]):
        raise RobenchError(f"corruption suite {where}: {key}.alexnet_err must be a number, got {entry['alexnet_err']!r}")
    if "category" in entry and not isinstance(entry["category"], str):
        raise RobenchError(f"corruption suite {where}: {key}.category must be a string, got {entry['category']!r}")


def _check_shape(where: str, c: str, sev: list, params: str):
    """A built-in corruption's values must have the shape of the family's (fog takes 2 numbers per severity)."""
    try:
        ref = _family_entry(params, c)["severity"]
    except RobenchError:
        return  # a corruption of the user's own: its function defines what it takes
    want, got = _shape(ref[0]), _shape(sev[0])
    if want != got:
        what = "a number" if want is None else f"a list of {want} numbers"
        raise RobenchError(f"corruption suite {where}: corruptions.{c}.severity values must each be {what} (as in "
                           f"the shipped {params} parameters), got {sev[0]!r}")


def _import_corruptions(module: str, suite_path: str):
    """Import a module that registers corruptions (@robench.corrupt.corruption): a .py path (relative to the suite
    file) or an importable module name."""
    import importlib
    import importlib.util
    from pathlib import Path

    if module.endswith(".py"):
        path = Path(module)
        if not path.is_absolute():
            path = Path(suite_path).parent / path
        if not path.is_file():
            raise RobenchError(f"corruption module not found: {path} (named by `modules` in {suite_path})")
        spec = importlib.util.spec_from_file_location(f"robench_user_corruptions.{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise RobenchError(f"cannot import corruption module '{module}' (named by `modules` in {suite_path}): "
                           f"{e}") from None


def _family_entry(params: str, name: str) -> dict:
    for s in FAMILY_SUITES[params]:
        t = get_suite(s).table
        if name in t:
            return {k: v for k, v in t[name].items() if k not in ("alexnet_err",)}
    raise RobenchError(f"no {params} parameters for corruption '{name}'")
