"""Sweep plans: what to evaluate, read from a TOML file (`robench sweep`), with robench.toml and the typed checks
of every value. CLI options (`robench eval`, robench.evaluate) become a Plan in robench.run.resolve.plan_from_options.

See docs/plan.md for the commented plan format. `robench.toml` in the working directory (or --config) may hold
data roots and model checkpoints, so `robench eval --model deit-quest --attack pgd` works as users type it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from robench.errors import RobenchError, suggest
from robench.suites.files import tomllib  # tomllib, or tomli before Python 3.11
from robench.zoo.entry import ModelEntry  # noqa: F401  (the plan's model reference, defined with the sources)


@dataclass
class Plan:
    models: list[ModelEntry]
    data: str | None = None
    attacks: list[str] = field(default_factory=list)
    corruptions: list[str] = field(default_factory=list)
    corruption_names: list[str] | None = None  # restrict a suite to these corruptions
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    corruption_backend: str = "torch"
    eps: list[float] | None = None
    steps: int | None = None
    limit: int | None = None
    attack_limit: int | None = None  # attack only the first N samples (of the --limit selection)
    corruption_limit: int | None = None  # corruption cells on the first N samples only
    subset: str | None = None
    batch_size: int = 64
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    seed: int = 0
    out: str = "results"
    force: bool = False
    strict: bool = False
    workers: int | None = None
    chunk_size: int = 256
    corruption_cache_mb: int = 1024  # corrupted images kept for the next model (CPU RAM)
    sanity_probe: bool = True  # add a large-eps PGD cell (gradient-masking check) when attacks run
    diagnostics: bool = False
    diagnostics_limit: int = 64
    allow_large_eps: bool = False  # accept L-inf eps > 1 / L2 eps beyond the image diameter
    quiet: bool = False
    command: str = ""

    def validate(self) -> "Plan":
        check_types(self)
        if not self.models:
            raise RobenchError("nothing to evaluate: the plan has no models")
        if not self.data:
            raise RobenchError("no data: pass --data (e.g. --data imagenet:/data/val) or set `data` in robench.toml")
        if self.batch_size < 1:
            raise RobenchError(f"batch size must be >= 1 (got {self.batch_size})")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise RobenchError(f"unknown precision '{self.precision}' (fp32, bf16, fp16)")
        if self.corruption_backend not in ("torch", "reference"):
            raise RobenchError(f"unknown corruption backend '{self.corruption_backend}' (torch, reference)")
        bad = [s for s in self.severities if not 1 <= int(s) <= 5]
        if bad:
            raise RobenchError(f"severity must be in 1..5 (got {bad[0]})")
        if self.chunk_size < 1:
            raise RobenchError("chunk_size must be >= 1")
        for key in ("limit", "attack_limit", "corruption_limit", "diagnostics_limit"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise RobenchError(f"{key} must be >= 1 (got {getattr(self, key)})")
        if self.workers is not None and self.workers < 0:
            raise RobenchError(f"workers must be >= 0 (0: load data in the main process; got {self.workers})")
        if self.corruption_cache_mb < 0:
            raise RobenchError(f"corruption_cache_mb must be >= 0 (got {self.corruption_cache_mb})")
        if not 0 <= self.seed <= MAX_SEED:
            raise RobenchError(f"seed must be an integer in 0..{MAX_SEED} (got {self.seed})")
        labels = [m.display for m in self.models]
        dup = {l for l in labels if labels.count(l) > 1}
        if dup:
            raise RobenchError(f"two models share the label '{dup.pop()}': give each a distinct `label`")
        return self


MAX_SEED = 2**63 - 1  # seeds are stored as SQLite integers and fed to torch generators

PLAN_KEYS = {f.name for f in fields(Plan)} - {"models", "command", "quiet"}
MODEL_KEYS = {f.name for f in fields(ModelEntry)} - {"module"}


def _check_keys(d: dict, allowed: set, where: str):
    unknown = [k for k in d if k not in allowed]
    if unknown:
        raise RobenchError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}"
                           + suggest(unknown[0], allowed) + f"; allowed: {', '.join(sorted(allowed))}")


def _model_entry(m, where: str, config: dict) -> ModelEntry:
    if isinstance(m, str):
        m = {"name": m}
    if not isinstance(m, dict) or "name" not in m:
        raise RobenchError(f"{where}: each model needs a `name`")
    _check_keys(m, MODEL_KEYS, where)
    entry = ModelEntry(**m)
    if entry.args is not None and not isinstance(entry.args, dict):
        raise RobenchError(f"{where}: `args` must be a table of keyword arguments, e.g. args = {{ depth = 12 }}")
    entry.mean, entry.std = parse_norms(entry.mean, entry.std, f"{where}: ")
    if entry.checkpoint is None and entry.random_init is not True:
        entry.checkpoint = config.get("checkpoints", {}).get(entry.name)
    return entry


def load_config(path=None) -> dict:
    """robench.toml: [data] roots by kind, [checkpoints] by model name, plus any plan default (out, device...)."""
    p = Path(path) if path else Path("robench.toml")
    if not p.exists():
        if path:
            raise RobenchError(f"config file not found: {p}")
        return {}
    try:
        cfg = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RobenchError(f"config {p} is not valid TOML: {e}") from None
    _check_keys(cfg, PLAN_KEYS | {"checkpoints", "data_roots"}, f"config {p}")
    for table, example in (("checkpoints", 'deit-quest = "ckpt/quest.pth"'), ("data_roots", 'imagenet = "/data/val"')):
        value = cfg.get(table, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise RobenchError(f"config {p}: `{table}` must be a table of name = path strings ([{table}] then "
                               f"{example}), got {value!r}")
    return cfg


def resolve_data(data: str | None, config: dict) -> str | None:
    """`imagenet` alone takes its root from the config's [data_roots]; `data` in the config is the default."""
    data = data or config.get("data")
    if data and ":" not in data and data != "digits" and data in config.get("data_roots", {}):
        return f"{data}:{config['data_roots'][data]}"
    return data


def load_plan(path, config: dict | None = None) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise RobenchError(f"plan file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RobenchError(f"plan {path} is not valid TOML: {e}") from None
    config = config or {}
    _check_keys(raw, PLAN_KEYS | {"models"}, f"plan {path}")
    models = raw.pop("models", None)
    if not isinstance(models, list) or not models:
        raise RobenchError(f"plan {path}: `models` must be a non-empty list ([[models]] tables or names)")
    defaults = {k: v for k, v in config.items() if k in PLAN_KEYS}
    for key in ("attacks", "corruptions"):
        if isinstance(raw.get(key), str):
            raw[key] = [raw[key]]
    plan = Plan(models=[_model_entry(m, f"plan {path} model {i + 1}", config) for i, m in enumerate(models)],
                **{**defaults, **raw})
    check_types(plan, f"plan {path}")
    plan.data = resolve_data(plan.data, config)
    if plan.eps is not None:
        from robench.attack import parse_eps  # local: robench.attack imports torch (~1.3 s); plans are read cold

        plan.eps = parse_eps(plan.eps) if isinstance(plan.eps, str) else [float(parse_eps(str(e))[0]) for e in plan.eps]
    return plan.validate()


# ---- typed values ------------------------------------------------------------------------------------------------
def _value_ok(value, annotation: str) -> bool:
    """Does value fit a (string) annotation of Plan/ModelEntry: int, float, str, bool, list[X], X | None."""
    alternatives = [a.strip() for a in annotation.split("|")]
    for a in alternatives:
        if a == "None" and value is None:
            return True
        if a.startswith("list[") and isinstance(value, (list, tuple)):
            inner = a[5:-1]
            if inner == "ModelEntry" or all(_value_ok(v, inner) for v in value):
                return True
        if a == "bool" and isinstance(value, bool):
            return True
        if a == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if a == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if a == "str" and isinstance(value, str):
            return True
        if a == "dict" and isinstance(value, dict):
            return True
        if a == "object":
            return True
    return False


def _describe(annotation: str) -> str:
    parts = []
    for a in (x.strip() for x in annotation.split("|")):
        if a == "None":
            continue
        if a.startswith("list["):
            inner = a[5:-1]
            parts.append(f"a list of {dict(int='integers', float='numbers', str='strings').get(inner, inner)}")
        else:
            parts.append({"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
                         .get(a, a))
    return " or ".join(parts)


def check_types(obj, where: str = "plan") -> None:
    """Every field of a Plan (and of its ModelEntry items) has its declared type; else a RobenchError naming
    the key, the expected type and the value."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name == "eps" and isinstance(value, (str, list, tuple)):
            continue  # "2/255,4/255" or ["4/255", 0.1]: parse_eps checks every value
        if not _value_ok(value, str(f.type)):
            raise RobenchError(f"{where}: `{f.name}` must be {_describe(str(f.type))}, got {value!r} "
                               f"({type(value).__name__})")
    if isinstance(obj, Plan):
        for i, m in enumerate(obj.models):
            if not isinstance(m, ModelEntry):
                raise RobenchError(f"{where}: model {i + 1} must be a model entry, got {m!r}")
            check_types(m, f"{where} model {i + 1} ({m.name})" if isinstance(m.name, str) else f"{where} model {i + 1}")


# ---- model options (robench eval, robench.evaluate, plan files) ----------------------------------------------------
def parse_model_args(items) -> dict:
    """['depth=2', "act='gelu'", 'widths=[16, 32]'] (or a dict) -> keyword arguments. Values are Python literals;
    a bare word (relu) is a string; true/false/none are accepted as True/False/None."""
    import ast
    import re

    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items:
        key, eq, text = str(item).partition("=")
        key, text = key.strip(), text.strip()
        if not eq or not key.isidentifier() or not text:
            raise RobenchError(f"--model-arg '{item}' does not parse: expected key=value with a Python literal "
                               "value (depth=2, act=gelu, dims=[64,128], scale=0.5)")
        low = text.lower()
        if low in ("true", "false", "none"):
            out[key] = {"true": True, "false": False, "none": None}[low]
            continue
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            if not re.fullmatch(r"[A-Za-z_][\w.\-]*", text):
                raise RobenchError(f"--model-arg '{item}' does not parse: '{text}' is not a Python literal "
                                   "(quote strings with spaces or brackets: name='a b')") from None
            out[key] = text
    return out


def parse_norm(value, what: str) -> list[float] | None:
    """--mean / --std: '0.5,0.5,0.5', one number for all channels, or a list, in [0, 1] units (std > 0); None stays
    None. The literal 'none' means no normalisation (the model takes [0, 1] images): mean 0, std 1."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "none":
        return [0.0] * 3 if what == "mean" else [1.0] * 3
    items = value.replace(" ", "").split(",") if isinstance(value, str) else list(value) if isinstance(
        value, (list, tuple)) else [value]
    try:
        vals = [float(v) for v in items if not isinstance(v, bool)]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != len(items) or len(vals) not in (1, 3):
        raise RobenchError(f"--{what} must be 1 or 3 comma-separated numbers (one per channel), got {value!r}")
    low = 0.0 if what == "mean" else 1e-6
    if not all(math.isfinite(v) and low <= v <= 1 for v in vals):
        raise RobenchError(f"--{what} values must be finite numbers in {'[0, 1]' if what == 'mean' else '(0, 1]'} "
                           f"(images are in [0, 1], not 0-255 units), got {value!r}")
    return vals * 3 if len(vals) == 1 else vals


def parse_norms(mean, std, where: str = "") -> tuple[list[float] | None, list[float] | None]:
    """--mean and --std (each checked by parse_norm); `--mean none` alone means no normalisation (std 1). That
    one is not given without the other is checked per model once its source is known (resolve)."""
    none = isinstance(mean, str) and mean.strip().lower() == "none"
    try:
        mean, std = parse_norm(mean, "mean"), parse_norm(std, "std")
    except RobenchError as e:
        raise RobenchError(f"{where}{e}") from None
    return mean, [1.0] * 3 if none and std is None else std
