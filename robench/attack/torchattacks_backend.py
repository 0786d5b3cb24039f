"""torchattacks (Kim, "Torchattacks: A PyTorch Repository for Adversarial Attacks", 2020) as an optional backend: any eps-bounded torchattacks attack (`torchattacks:<Name>?k=v`), under robench's bookkeeping
(labels, eps loop, invariants, robust flags re-evaluated by robench). torchattacks draws from the global torch RNG:
robench seeds it once per eps from all per-sample seeds of the batch (inside fork_rng, so the caller's RNG is
untouched); results therefore depend on the chunk, as for AutoAttack.

Distance: the attack's own (L∞ or L2, eps-bounded attacks only). Shapes: x (B, C, H, W) in [0, 1], y (B,) long;
result robust / adv_pred (n_eps, B). Spec syntax: `torchattacks:<Name>?key=value&key=value`, e.g.
`torchattacks:PGD?eps=2/255,4/255&steps=10&alpha=1/255` (values parse as numbers/fractions, true/false or strings;
`eps` may list several values).
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import torch

from robench.attack.base import AttackKind, AttackOptions, AttackResult, check_adversarial, clean_pass, confirm, \
    register_kind
from robench.attack.spec import NORMS, AttackSpec, choice, number, parse_eps
from robench.errors import RobenchError, suggest
from robench.seeding import derive_seed

TORCHATTACKS_HINT = "pip install 'robench[torchattacks]'"


def run_torchattacks(f, x0, y, spec: AttackSpec, seeds, opts: AttackOptions) -> AttackResult:
    ta = import_torchattacks()
    cls = getattr(ta, spec.params["attack"])
    kwargs = {k: v for k, v in spec.params.items() if k != "attack"}
    E, B = len(spec.eps), x0.shape[0]
    pred0, zero_grad, rejected_clean = clean_pass(f, x0, y, f32=opts.f32)
    rejected = []
    robust = torch.zeros(E, B, dtype=torch.bool, device=x0.device)
    adv_pred = pred0.expand(E, B).clone()
    devices = [x0.device] if x0.device.type == "cuda" else []
    for k, e in enumerate(spec.eps):
        atk = cls(f, eps=float(e), **kwargs)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed("torchattacks", float(e), *[int(s) for s in seeds]))
            x_adv = atk(x0, y).detach()
        check_adversarial(x_adv, x0, e, spec.norm, True, spec.name)
        with torch.no_grad():
            p = f(x_adv).argmax(1)
        p, rej = confirm(opts.f32, x_adv, y, p)
        rejected.append(rejected_clean + (0 if rej is None else int(rej.sum())))
        robust[k] = (p == y) & (pred0 == y)
        adv_pred[k] = p
    return AttackResult(robust=robust, adv_pred=adv_pred, zero_grad=zero_grad,
                        info={"clean_correct": (pred0 == y).tolist(), "rejected_hits": rejected})


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
    params["attack"] = name
    return AttackSpec(name=spec_name or f"torchattacks:{name}", kind="torchattacks", norm=norm, eps=tuple(eps),
                      steps=int(n_steps) if isinstance(n_steps, int) else 1, step_size="torchattacks",
                      random_start=bool(rs), params=params)


def parse_torchattacks(d: dict, kw: dict, params: dict, where: str) -> AttackSpec:
    if kw["protocol"] != "standard":
        raise RobenchError(f"{where}: the paper protocol is not available for torchattacks attacks")
    if "attack" not in params:
        raise RobenchError(f"{where}: a torchattacks attack needs params.attack (e.g. 'PGD')")
    spec = torchattacks_from_params(str(params["attack"]), params, eps=kw["eps"], spec_name=kw["name"])
    return dataclasses.replace(spec, adaptive=kw["adaptive"])


def label_torchattacks(s: AttackSpec) -> str:
    return f"{s.name} {s.norm_label}"


TORCHATTACKS = register_kind(AttackKind("torchattacks", parse=parse_torchattacks, run=run_torchattacks,
                                        label=label_torchattacks, order=3, batch_random=True,
                                        from_text=torchattacks_spec))
