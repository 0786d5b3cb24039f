"""Attack specifications: `AttackSpec`, eps / step-size parsing, and suite loading (`load_attack_suite`).

A suite is a TOML file with one `[[attack]]` table per attack (see attacks/pgd.toml). Keys of a table are the
shared fields of `AttackSpec` (name, kind, norm, eps, protocol, adaptive) plus the kind's own (its `keys`: FGSM/PGD
steps, step_size, random_start, restarts, loss, targeted, params.target; AutoAttack version, params), which its
parser turns into the spec's `options`. `eps` is a list (or comma-separated string) of numbers or fractions like
"4/255", in pixel units (in normalised units under the paper protocol). `step_size` is a rule: "2.5*eps/steps",
"0.15*eps", "eps/steps", or an absolute number ("1/255", 0.01).

`torchattacks:<Name>?key=value&key=value` runs one torchattacks attack, e.g.
`torchattacks:PGD?eps=2/255,4/255&steps=10&alpha=1/255`. Values parse as numbers/fractions, true/false or strings;
`eps` may list several values (comma-separated).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from robench.attack.base import get_kind, kind_names
from robench.errors import RobenchError, suggest

# bump when an algorithm changes its results: stored results with another version are redone.
# 2: FGSM/PGD random starts and random targets from counter-based draws on the model's device (robench.attack.draws)
ENGINE_VERSION = 2
NORMS = ("Linf", "L2")
LOSSES = ("ce", "dlr")
PROTOCOLS = ("standard", "paper")


def number(s, what: str) -> float:
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
        e = number(s, "eps")
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
    c = number(m["c"], "step_size") if m["c"] else 1.0
    if c <= 0:
        raise RobenchError(f"step_size must be > 0, got {rule!r}")
    c = f"{c:g}" if not m["c"] or "/" not in m["c"] else m["c"]
    return f"{c}*eps/steps" if m["steps"] else f"{c}*eps" if m["eps"] else c


def step_size(rule: str, eps: float, steps: int) -> float:
    """Evaluate a canonical step-size rule."""
    c, _, rest = rule.partition("*")
    c = number(c, "step_size")
    if rest == "eps/steps":
        return c * eps / steps
    if rest == "eps":
        return c * eps
    return c


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a suite: what every kind shares, plus `options`, the kind's own frozen dataclass (built by the
    kind's parser: e.g. robench.attack.pgd.GradientOptions). eps is in pixel units ([0, 1] images); under protocol
    'paper' in normalised units."""

    name: str
    kind: str  # the name of a registered kind (robench.attack.base.kind_names()): fgsm | pgd | autoattack | ...
    norm: str = "Linf"
    eps: tuple = (4 / 255,)
    protocol: str = "standard"
    adaptive: bool = False
    options: object = None

    def params_dict(self) -> dict:
        """Every value that defines the result, JSON-able (the result store hashes it into cell ids): the shared
        fields, the options' `identity()` (else their fields) and the engine version."""
        d = {"name": self.name, "kind": self.kind, "norm": self.norm, "eps": [float(e) for e in self.eps],
             "protocol": self.protocol, "adaptive": self.adaptive}
        if self.options is not None:
            ident = getattr(self.options, "identity", None)
            extra = ident() if ident is not None else dataclasses.asdict(self.options)
            if set(extra) & set(d):
                raise RobenchError(f"attack kind '{self.kind}': its options repeat shared keys "
                                   f"({', '.join(sorted(set(extra) & set(d)))})")
            d.update(extra)
        d["engine_version"] = ENGINE_VERSION
        return d

    @property
    def norm_label(self) -> str:
        return "L∞" if self.norm == "Linf" else self.norm

    @property
    def label(self) -> str:
        """Human description, e.g. 'PGD-10 L∞ (step 2.5*eps/steps, random start)' (the kind's own label)."""
        s = get_kind(self.kind).label(self)
        if self.adaptive:
            s += " [adaptive: grad through elliptical m]"
        if self.protocol == "paper":
            s += " [NON-STANDARD paper protocol: eps in normalised space, no [0,1] clipping, predicted labels]"
        return s


def choice(value, choices, what: str):
    if value not in choices:
        raise RobenchError(f"unknown {what} '{value}'" + suggest(value, choices) + f"; choose from: {', '.join(choices)}")
    return value


def flag(v, what):
    if not isinstance(v, bool):
        raise RobenchError(f"{what} must be true or false, got {v!r}")
    return v


def positive_int(v, what="steps") -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise RobenchError(f"{what} must be an integer >= 1, got {v!r}")
    try:
        n = int(str(v))
    except ValueError:
        raise RobenchError(f"{what} must be an integer >= 1, got {v!r}") from None
    if n < 1:
        raise RobenchError(f"{what} must be an integer >= 1, got {v!r}")
    return n


SHARED_KEYS = ("name", "kind", "norm", "eps", "protocol", "adaptive")


def steps_replaced(spec: AttackSpec, steps: int) -> AttackSpec:
    """`spec` with `steps` steps: the `with_steps` of every kind whose options have a `steps` field (--steps)."""
    return dataclasses.replace(spec, options=dataclasses.replace(spec.options, steps=steps))


def spec_from_dict(table: dict, where: str = "suite") -> AttackSpec:
    """Validate one [[attack]] table and build its AttackSpec: the keys every kind shares here, the rest (the
    kind's `keys`) by the kind's own parser (robench.attack.base registry)."""
    table = dict(table)
    if "kind" not in table:
        raise RobenchError(f"{where}: attack needs a 'kind' ({', '.join(kind_names()[:3])})")
    impl = get_kind(choice(table["kind"], kind_names(), "attack kind"))
    allowed = list(SHARED_KEYS) + [k for k in impl.keys if k not in SHARED_KEYS]
    for k in table:
        if k not in allowed:
            raise RobenchError(f"{where}: unknown attack key '{k}' (kind '{impl.name}')" + suggest(k, allowed)
                               + f"; keys: {', '.join(allowed)}")
    common = dict(name=str(table.get("name", impl.name)), kind=impl.name)
    common["norm"] = choice(table.get("norm", "Linf"), impl.norms, "norm")
    if impl.min_norm and "eps" in table:
        raise RobenchError(f"{where}: '{impl.name}' is a minimum-norm attack (one run gives every eps): drop 'eps'")
    common["eps"] = (math.inf,) if impl.min_norm else tuple(parse_eps(table.get("eps", 4 / 255)))
    common["protocol"] = choice(table.get("protocol", "standard"), PROTOCOLS, "protocol")
    common["adaptive"] = flag(table.get("adaptive", False), "adaptive")
    return impl.parse(table, common, where)


def make_spec(kind: str, name: str | None = None, **table) -> AttackSpec:
    """An AttackSpec from keyword arguments, validated as a suite's [[attack]] table would be, e.g.
    make_spec("pgd", eps=(4 / 255,), steps=5, random_start=False)."""
    return spec_from_dict({"kind": kind, "name": name or kind, **table}, f"attack '{name or kind}'")


def load_attack_suite(name_or_path: str, *, eps=None, steps=None) -> list[AttackSpec]:
    """Attacks of a shipped suite (`pgd`), a user suite file, or one `torchattacks:<Name>?k=v&...` attack.

    `eps` (list of floats or a string like "2/255,4/255") replaces every attack's eps; `steps` replaces the number
    of steps of the iterative attacks (PGD, torchattacks attacks with a `steps` parameter).
    """
    if eps is not None:
        eps = tuple(parse_eps(eps))
    if steps is not None:
        steps = positive_int(steps)
    prefix, sep, _ = str(name_or_path).partition(":")
    if sep and prefix in kind_names() and get_kind(prefix).from_text is not None:  # e.g. torchattacks:PGD?eps=...
        return [get_kind(prefix).from_text(str(name_or_path), eps=eps, steps=steps)]
    from robench.suites import load_suite

    data = load_suite("attacks", str(name_or_path))
    where = f"attack suite '{data['name']}'"
    tables = data.get("attack")
    if not isinstance(tables, list) or not tables:
        raise RobenchError(f"{where} has no [[attack]] tables")
    specs = [spec_from_dict(t, where) for t in tables]
    if eps is not None:
        if any(get_kind(s.kind).min_norm for s in specs):
            raise RobenchError(f"--eps does not apply to {where}: a minimum-norm attack gives every eps in one run "
                               "(read them with `robench curve`)")
        # an attack whose eps is not a budget (a sparse patch: eps 1, the pixel range) keeps it
        specs = [s if getattr(s.options, "fixed_eps", False) else dataclasses.replace(s, eps=eps) for s in specs]
    if steps is not None:
        takes = [get_kind(s.kind).with_steps for s in specs]
        if not any(takes):
            raise RobenchError(f"--steps does not apply to {where}: FGSM is a single step and AutoAttack runs its "
                               "own schedule (use a 'custom' AutoAttack suite with params.n_iter)")
        specs = [with_steps(s, steps) if with_steps else s for s, with_steps in zip(specs, takes)]
    return specs
