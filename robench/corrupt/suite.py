"""Corruption suites: which corruptions, their categories, severity parameters and AlexNet errors (for mCE).

Suites are TOML files (corruptions/imagenet-c.toml, imagenet-c-extra.toml, cifar10-c.toml, or a user path):

    name = "imagenet-c"; params = "imagenet"; alexnet_clean_err = 0.435
    [corruptions.gaussian_noise]
    category = "noise"; alexnet_err = 0.886428; severity = [0.08, 0.12, 0.18, 0.26, 0.38]

A user suite may list `modules = ["my_corruptions.py"]` (paths relative to the suite file, or module names): they are
imported first, so the corruptions they register (@robench.corrupt.corruption) can be used from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robench.corrupt import registry
from robench.errors import RobenchError, suggest
from robench.suites import load_suite, suite_names

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

    def category(self, name: str) -> str:
        """The suite file's category, else the registered family."""
        d = registry.get(name)
        return self._entry(name).get("category", d.family if d else "other")

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


_cache: dict[str, CorruptionSuite] = {}


def get_suite(name_or_path: str | CorruptionSuite) -> CorruptionSuite:
    """Load a corruption suite by name (imagenet-c, imagenet-c-extra, cifar10-c) or TOML path (validated, cached)."""
    if isinstance(name_or_path, CorruptionSuite):
        return name_or_path
    if name_or_path in _cache:
        return _cache[name_or_path]
    data = load_suite("corruptions", name_or_path)
    name = data["name"]
    params = data.get("params", "imagenet")
    if params not in FAMILY_SUITES:
        raise RobenchError(f"suite {name}: params must be 'imagenet' or 'cifar', got {params!r}")
    for module in data.get("modules", []):  # Python files / modules registering the suite's own corruptions
        _import_corruptions(module, name_or_path)
    table = data.get("corruptions", {})
    if not table:
        raise RobenchError(f"suite {name} defines no [corruptions.<name>] tables")
    for c, entry in table.items():
        check_corruption(c)
        sev = entry.get("severity")
        if sev is not None and (not isinstance(sev, list) or len(sev) != 5):
            raise RobenchError(f"suite {name}: corruptions.{c}.severity must list 5 values (one per severity)")
    suite = CorruptionSuite(name=name, params=params, corruptions=list(table), table=table,
                            alexnet_clean_err=data.get("alexnet_clean_err"))
    # A user suite may omit `severity` to reuse the family's parameters.
    for c in list(table):
        if "severity" not in table[c]:
            table[c] = {**_family_entry(params, c), **table[c]}
    _cache[name_or_path] = suite
    # a suite loaded from a path can then be found by its name too (results store the name), unless it would
    # shadow a shipped suite
    if name not in suite_names("corruptions"):
        _cache.setdefault(name, suite)
    return suite


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
