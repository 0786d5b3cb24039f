"""torchattacks (Kim, "Torchattacks: A PyTorch Repository for Adversarial Attacks", 2020) as an optional backend:
any eps-bounded torchattacks attack (`torchattacks:<Name>?k=v`), under robench's protocol (robench.attack.core:
labels, eps loop, invariants, robust flags re-evaluated by robench); the kind only makes the images. torchattacks
draws from the global torch RNG: robench seeds it once per eps from all per-sample seeds of the batch (inside
fork_rng, so the caller's RNG is untouched); results therefore depend on the chunk, as for AutoAttack.

Distance: the attack's own (L∞ or L2, eps-bounded attacks only). Shapes: x (B, C, H, W) in [0, 1], y (B,) long;
result robust / adv_pred (n_eps, B). Spec syntax: `torchattacks:<Name>?key=value&key=value`, e.g.
`torchattacks:PGD?eps=2/255,4/255&steps=10&alpha=1/255` (values parse as numbers/fractions, true/false or strings;
`eps` may list several values).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field

from robench.attack.base import AttackKind, RunContext, forked_rng, register_kind
from robench.attack.spec import NORMS, AttackSpec, choice, number, parse_eps
from robench.errors import RobenchError, suggest
from robench.seeding import derive_seed

TORCHATTACKS_HINT = "pip install 'robench[torchattacks]'"


def attack_torchattacks(f, x, labels, eps: float, spec: AttackSpec, seeds, ctx: RunContext):
    """torchattacks' adversarial images of the batch at one eps (the global RNG seeded from the batch's seeds)."""
    o: TorchattacksOptions = spec.options
    atk = getattr(import_torchattacks(), o.attack)(f, eps=float(eps), **o.args)
    with forked_rng(x.device, derive_seed("torchattacks", float(eps), *ctx.batch_seeds)):
        return atk(x, labels).detach()


@dataclass(frozen=True)
class TorchattacksOptions:
    """attack: the torchattacks class name; args: its keyword arguments besides model and eps; steps and
    random_start: what the attack will do (for labels and the hash), from args or the class's defaults."""

    attack: str
    args: dict = field(default_factory=dict)
    steps: int = 1
    random_start: bool = False

    def identity(self) -> dict:
        """The values hashed into cell ids, in the layout stored cells were written with."""
        return {"steps": self.steps, "step_size": "torchattacks", "random_start": self.random_start, "restarts": 1,
                "loss": "ce", "targeted": False, "version": None, "params": {**self.args, "attack": self.attack}}


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
        return number(v, k)
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
    choice(norm, NORMS, "norm")
    n_steps = params.get("steps", sig["steps"].default if "steps" in sig else 1)
    rs = params.get("random_start", sig["random_start"].default if "random_start" in sig else False)
    options = TorchattacksOptions(name, params, int(n_steps) if isinstance(n_steps, int) else 1, bool(rs))
    return AttackSpec(name=spec_name or f"torchattacks:{name}", kind="torchattacks", norm=norm, eps=tuple(eps),
                      options=options)


def parse_torchattacks(table: dict, common: dict, where: str) -> AttackSpec:
    if common["protocol"] != "standard":
        raise RobenchError(f"{where}: the paper protocol is not available for torchattacks attacks")
    params = dict(table.get("params", {}))
    if "attack" not in params:
        raise RobenchError(f"{where}: a torchattacks attack needs params.attack (e.g. 'PGD')")
    spec = torchattacks_from_params(str(params["attack"]), params, eps=common["eps"], spec_name=common["name"])
    return dataclasses.replace(spec, adaptive=common["adaptive"])


def label_torchattacks(s: AttackSpec) -> str:
    return f"{s.name} {s.norm_label}"


# whole_batch: torchattacks gets the whole chunk, so its batched random draws are those of a plain call on it
TORCHATTACKS = register_kind(AttackKind("torchattacks", parse=parse_torchattacks, attack=attack_torchattacks,
                                        label=label_torchattacks, order=3, keys=("params",), batch_random=True,
                                        whole_batch=True, from_text=torchattacks_spec))
