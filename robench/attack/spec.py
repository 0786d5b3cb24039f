"""Attack specifications: `AttackSpec`, eps / step-size parsing, and suite loading (`load_attack_suite`).

A suite is a TOML file with one `[[attack]]` table per attack (see attacks/pgd.toml). Keys of a table are the
fields of `AttackSpec`; `eps` is a list (or comma-separated string) of numbers or fractions like "4/255", in pixel
units (in normalised units under the paper protocol). `step_size` is a rule: "2.5*eps/steps", "0.15*eps",
"eps/steps", or an absolute number ("1/255", 0.01).

`torchattacks:<Name>?key=value&key=value` runs one torchattacks attack, e.g.
`torchattacks:PGD?eps=2/255,4/255&steps=10&alpha=1/255`. Values parse as numbers/fractions, true/false or strings;
`eps` may list several values (comma-separated).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field

from robench.errors import RobenchError, suggest

ENGINE_VERSION = 1  # bump when an algorithm changes its results: stored results with another version are redone
KINDS = ("fgsm", "pgd", "autoattack", "torchattacks")
NORMS = ("Linf", "L2")
LOSSES = ("ce", "dlr")
PROTOCOLS = ("standard", "paper")
AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
AA_OVERRIDES = ("attacks", "n_iter", "n_restarts", "n_target_classes", "n_queries")
TORCHATTACKS_HINT = "pip install 'robench[torchattacks]'"


def _number(s, what: str) -> float:
    """'4/255', '0.5', 3 -> float."""
    if isinstance(s, bool):
        raise RobenchError(f"{what}: expected a number, got {s!r}")
    if isinstance(s, (int, float)):
        return float(s)
    try:
        num, sep, den = str(s).strip().partition("/")
        return float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        raise RobenchError(f"{what}: cannot parse {s!r} as a number (e.g. 0.5 or 4/255)") from None


def parse_eps(value) -> list[float]:
    """'2/255,4/255' | 0.03 | ['1/255', 0.5] -> sorted, de-duplicated list of eps > 0."""
    if isinstance(value, str):
        items = [s for s in value.replace(" ", "").split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items or items == [""]:
        raise RobenchError("eps: no value given (e.g. --eps 2/255,4/255)")
    out = []
    for s in items:
        e = _number(s, "eps")
        if not math.isfinite(e) or e <= 0:
            raise RobenchError(f"eps must be a finite number > 0, got {s!r}")
        out.append(e)
    return sorted(set(out))


_STEP_RE = re.compile(r"^(?:(?P<c>[0-9.]+(?:/[0-9.]+)?)\*?)?(?P<eps>eps)?(?:/(?P<steps>steps))?$")


def parse_step_size(rule) -> str:
    """Canonical step-size rule: 'C*eps/steps', 'C*eps' or an absolute 'C'. Raises RobenchError if unparsable."""
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        rule = repr(float(rule))
    s = str(rule).replace(" ", "").replace("·", "*")
    m = _STEP_RE.match(s)
    if not m or (m["c"] is None and m["eps"] is None) or (m["steps"] and not m["eps"]):
        raise RobenchError(f"step_size: cannot parse {rule!r} (use e.g. '2.5*eps/steps', '0.15*eps' or '1/255')")
    c = _number(m["c"], "step_size") if m["c"] else 1.0
    if c <= 0:
        raise RobenchError(f"step_size must be > 0, got {rule!r}")
    c = f"{c:g}" if not m["c"] or "/" not in m["c"] else m["c"]
    return f"{c}*eps/steps" if m["steps"] else f"{c}*eps" if m["eps"] else c


def step_size(rule: str, eps: float, steps: int) -> float:
    """Evaluate a canonical step-size rule."""
    c, _, rest = rule.partition("*")
    c = _number(c, "step_size")
    if rest == "eps/steps":
        return c * eps / steps
    if rest == "eps":
        return c * eps
    return c


def fmt_eps(e: float) -> str:
    """'4/255' for multiples of 1/255, '0.3' for short decimals, '0.5/255' for eighths of 1/255, else 4 digits."""
    k = e * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    if len(repr(e)) <= 6:
        return repr(e)
    if abs(8 * k - round(8 * k)) < 1e-6:
        return f"{round(8 * k) / 8:g}/255"
    return f"{e:.4g}"


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite. eps is in pixel units ([0, 1] images); under protocol 'paper' in normalised units."""

    name: str
    kind: str  # fgsm | pgd | autoattack | torchattacks
    norm: str = "Linf"
    eps: tuple = (4 / 255,)
    steps: int = 10
    step_size: str = "2.5*eps/steps"
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    targeted: bool = False
    protocol: str = "standard"
    adaptive: bool = False
    version: str | None = None  # autoattack version
    params: dict = field(default_factory=dict)

    def params_dict(self) -> dict:
        """Every parameter, JSON-able (the result store hashes this to decide whether results can be reused)."""
        d = dataclasses.asdict(self)
        d["eps"] = [float(e) for e in self.eps]
        d["params"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.params.items())}
        d["engine_version"] = ENGINE_VERSION
        return d

    def alpha(self, eps: float) -> float:
        return step_size(self.step_size, eps, self.steps)

    @property
    def label(self) -> str:
        """Human description, e.g. 'PGD-10 L∞ (step 2.5*eps/steps, random start)'."""
        norm = "L∞" if self.norm == "Linf" else "L2"
        if self.kind == "fgsm":
            s = f"FGSM {norm}"
        elif self.kind == "pgd":
            bits = [f"step {self.step_size}"]
            if self.random_start:
                bits.append("random start")
            if self.restarts > 1:
                bits.append(f"{self.restarts} restarts")
            if self.loss != "ce":
                bits.append(f"{self.loss.upper()} loss")
            if self.targeted:
                bits.append("targeted")
            s = f"PGD-{self.steps} {norm} ({', '.join(bits)})"
        elif self.kind == "autoattack":
            extra = f": {'+'.join(self.params.get('attacks', []))}" if self.version == "custom" else ""
            s = f"AutoAttack-{self.version}{extra} {norm}"
        else:
            s = f"{self.name} {norm}"
        if self.adaptive:
            s += " [adaptive: grad through elliptical m]"
        if self.protocol == "paper":
            s += " [NON-STANDARD paper protocol: eps in normalised space, no [0,1] clipping, predicted labels]"
        return s

    def cell_label(self, eps: float) -> str:
        """'pgd Linf 4/255' (+ ' [paper]')."""
        return f"{self.name} {self.norm} {fmt_eps(eps)}" + (" [paper]" if self.protocol == "paper" else "")


def _choice(value, choices, what: str):
    if value not in choices:
        raise RobenchError(f"unknown {what} '{value}'" + suggest(value, choices) + f"; choose from: {', '.join(choices)}")
    return value


def _bool(v, what):
    if not isinstance(v, bool):
        raise RobenchError(f"{what} must be true or false, got {v!r}")
    return v


def _steps(v, what="steps") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise RobenchError(f"{what} must be an integer >= 1, got {v!r}")
    try:
        n = int(str(v))
    except ValueError:
        raise RobenchError(f"{what} must be an integer >= 1, got {v!r}") from None
    if n < 1:
        raise RobenchError(f"{what} must be an integer >= 1, got {v!r}")
    return n


FIELDS = [f.name for f in dataclasses.fields(AttackSpec)]


def spec_from_dict(d: dict, where: str = "suite") -> AttackSpec:
    """Validate one [[attack]] table and build its AttackSpec."""
    d = dict(d)
    for k in d:
        if k not in FIELDS:
            raise RobenchError(f"{where}: unknown attack key '{k}'" + suggest(k, FIELDS) + f"; keys: {', '.join(FIELDS)}")
    if "kind" not in d:
        raise RobenchError(f"{where}: attack needs a 'kind' ({', '.join(KINDS[:3])})")
    kind = _choice(d["kind"], KINDS, "attack kind")
    name = str(d.get("name", kind))
    kw = dict(name=name, kind=kind)
    kw["norm"] = _choice(d.get("norm", "Linf"), NORMS, "norm")
    kw["eps"] = tuple(parse_eps(d.get("eps", 4 / 255)))
    kw["protocol"] = _choice(d.get("protocol", "standard"), PROTOCOLS, "protocol")
    kw["adaptive"] = _bool(d.get("adaptive", False), "adaptive")
    params = dict(d.get("params", {}))
    if kind == "fgsm":
        kw.update(steps=1, step_size="1*eps", random_start=False, restarts=1)
        for k in ("steps", "step_size", "random_start", "restarts"):
            if k in d and d[k] != {"steps": 1, "step_size": "1*eps", "random_start": False, "restarts": 1}[k]:
                raise RobenchError(f"{where}: FGSM is one step of size eps without random start; drop '{k}' "
                                   "or use kind = 'pgd'")
    if kind in ("fgsm", "pgd"):
        if kind == "pgd":
            kw["steps"] = _steps(d.get("steps", 10))
            kw["step_size"] = parse_step_size(d.get("step_size", "2.5*eps/steps"))
            kw["random_start"] = _bool(d.get("random_start", True), "random_start")
            kw["restarts"] = _steps(d.get("restarts", 1), "restarts")
        kw["loss"] = _choice(d.get("loss", "ce"), LOSSES, "loss")
        kw["targeted"] = _bool(d.get("targeted", False), "targeted")
        if params.get("target", "random") not in ("random", "least-likely"):
            raise RobenchError(f"{where}: params.target must be 'random' or 'least-likely'")
    elif kind == "autoattack":
        kw["version"] = _choice(d.get("version", "standard"), AA_VERSIONS, "AutoAttack version")
        for k in params:
            _choice(k, AA_OVERRIDES, "AutoAttack parameter")
        if kw["version"] != "custom" and params:
            raise RobenchError(f"{where}: AutoAttack '{kw['version']}' takes no overrides ({', '.join(params)}); "
                               "use version = 'custom' for a modified AutoAttack")
        if kw["version"] == "custom":
            attacks = params.get("attacks")
            if not attacks or not isinstance(attacks, list):
                raise RobenchError(f"{where}: AutoAttack 'custom' needs params.attacks, e.g. ['apgd-ce', 'apgd-t']")
            for a in attacks:
                _choice(a, AA_ATTACKS, "AutoAttack attack")
            for k in ("n_iter", "n_restarts", "n_target_classes", "n_queries"):
                if k in params:
                    params[k] = _steps(params[k], f"params.{k}")
        kw["steps"] = int(params.get("n_iter", 100))
        kw.update(step_size="apgd", random_start=True, restarts=1)
    else:
        if kw["protocol"] != "standard":
            raise RobenchError(f"{where}: the paper protocol is not available for torchattacks attacks")
        if "attack" not in params:
            raise RobenchError(f"{where}: a torchattacks attack needs params.attack (e.g. 'PGD')")
        spec = torchattacks_from_params(str(params["attack"]), params, eps=kw["eps"], spec_name=name)
        return dataclasses.replace(spec, adaptive=kw["adaptive"])
    kw["params"] = params
    return AttackSpec(**kw)


def load_attack_suite(name_or_path: str, *, eps=None, steps=None) -> list[AttackSpec]:
    """Attacks of a shipped suite (`pgd`), a user suite file, or one `torchattacks:<Name>?k=v&...` attack.

    `eps` (list of floats or a string like "2/255,4/255") replaces every attack's eps; `steps` replaces the number
    of steps of the iterative attacks (PGD, torchattacks attacks with a `steps` parameter).
    """
    if eps is not None:
        eps = tuple(parse_eps(eps))
    if steps is not None:
        steps = _steps(steps)
    if str(name_or_path).startswith("torchattacks:"):
        specs = [torchattacks_spec(str(name_or_path), eps=eps, steps=steps)]
        return specs
    from robench.suites import load_suite

    data = load_suite("attacks", str(name_or_path))
    where = f"attack suite '{data['name']}'"
    tables = data.get("attack")
    if not isinstance(tables, list) or not tables:
        raise RobenchError(f"{where} has no [[attack]] tables")
    specs = [spec_from_dict(t, where) for t in tables]
    if eps is not None:
        specs = [dataclasses.replace(s, eps=eps) for s in specs]
    if steps is not None:
        if not any(s.kind == "pgd" for s in specs):
            raise RobenchError(f"--steps does not apply to {where}: FGSM is a single step and AutoAttack runs its "
                               "own schedule (use a 'custom' AutoAttack suite with params.n_iter)")
        specs = [dataclasses.replace(s, steps=steps) if s.kind == "pgd" else s for s in specs]
    return specs


def import_torchattacks():
    try:
        import torchattacks
    except ImportError:
        raise RobenchError(f"the torchattacks backend is not installed; install it with: {TORCHATTACKS_HINT}") from None
    return torchattacks


def _query_value(k: str, v: str):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if re.fullmatch(r"-?\d+", v):
        return int(v)
    try:
        return _number(v, k)
    except RobenchError:
        return v


def torchattacks_spec(text: str, *, eps=None, steps=None) -> AttackSpec:
    """'torchattacks:PGD?eps=4/255&steps=10' -> AttackSpec(kind='torchattacks')."""
    body = text[len("torchattacks:"):] if text.startswith("torchattacks:") else text
    name, _, query = body.partition("?")
    params: dict = {}
    for part in filter(None, query.split("&")):
        k, sep, v = part.partition("=")
        if not sep:
            raise RobenchError(f"torchattacks parameters are key=value pairs joined by '&', got {part!r}")
        params[k] = v if k == "eps" else _query_value(k, v)
    return torchattacks_from_params(name, params, eps=eps, steps=steps)


def torchattacks_from_params(name: str, params: dict, *, eps=None, steps=None, spec_name=None) -> AttackSpec:
    """AttackSpec for torchattacks.<name>(model, eps=..., **params); validates names against the installed package."""
    ta = import_torchattacks()
    names = [n for n in ta.__all__ if n not in ("MultiAttack", "VANILA", "LGV")]
    if name not in names:
        raise RobenchError(f"unknown torchattacks attack '{name}'" + suggest(name, names))
    sig = inspect.signature(getattr(ta, name).__init__).parameters
    params = dict(params)
    params.pop("attack", None)
    eps_q = tuple(parse_eps(params.pop("eps"))) if "eps" in params else None
    choices = [p for p in sig if p not in ("self", "model", "eps")]
    for k in params:
        if k not in choices:
            raise RobenchError(f"torchattacks.{name} has no parameter '{k}'" + suggest(k, choices)
                               + f"; parameters: {', '.join(choices)}")
    if "eps" not in sig:
        raise RobenchError(f"torchattacks.{name} has no eps parameter; robench only runs eps-bounded attacks")
    if eps is None:
        eps = eps_q or (float(sig["eps"].default),)
    if steps is not None:
        if "steps" not in sig:
            raise RobenchError(f"--steps does not apply to torchattacks.{name} (no 'steps' parameter)")
        params["steps"] = steps
    norm = params.get("norm", "L2" if name.endswith("L2") else "Linf")
    _choice(norm, NORMS, "norm")
    n_steps = params.get("steps", sig["steps"].default if "steps" in sig else 1)
    rs = params.get("random_start", sig["random_start"].default if "random_start" in sig else False)
    params["attack"] = name
    return AttackSpec(name=spec_name or f"torchattacks:{name}", kind="torchattacks", norm=norm, eps=tuple(eps),
                      steps=int(n_steps) if isinstance(n_steps, int) else 1, step_size="torchattacks",
                      random_start=bool(rs), params=params)
