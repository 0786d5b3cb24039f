"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020) through pyautoattack (the original algorithms: APGD-CE, APGD-T, FAB-T, Square;
100 iterations).

Distance: L∞ or L2 (in the attacked space). Shapes: x (B, C, H, W) in [0, 1] (standard protocol), y (B,) long;
result robust / adv_pred (n_eps, B).

robench runs AutoAttack's own `run_standard_evaluation`, one attack of the version's list at a time, each on the
samples still robust (exactly what one call does internally with batch_size >= chunk, which the equivalence test
checks). That gives per-attack robust accuracy and which attack broke each sample (for the Square sanity flag).
Robust flags come from re-evaluating the model on the returned adversarial examples; AutoAttack's state file is
never used. AutoAttack's random draws are batched: its seed is derived from all per-sample seeds of the chunk.
"""

from __future__ import annotations

import logging

import torch

from robench.attack.base import (AttackKind, AttackOptions, AttackResult, check_adversarial, clean_pass, confirm,
                                 register_kind)
from robench.attack.spec import AttackSpec, choice, positive_int
from robench.errors import RobenchError
from robench.seeding import derive_seed

AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
AA_OVERRIDES = ("attacks", "n_iter", "n_restarts", "n_target_classes", "n_queries")


def autoattack_seed(seeds) -> int:
    """The one seed AutoAttack gets for a chunk (from the per-sample seeds)."""
    return derive_seed("autoattack", *[int(s) for s in seeds])


def make_autoattack(f, spec: AttackSpec, eps: float, seed: int, device):
    """A configured pyautoattack.AutoAttack for one eps (custom overrides applied)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise RobenchError("pyautoattack is not installed; install it with: pip install pyautoattack") from None
    p = spec.params
    aa = AutoAttack(f, norm=spec.norm, eps=float(eps), version=spec.version, seed=int(seed), device=device,
                    attacks=list(p["attacks"]) if spec.version == "custom" else None)
    if "n_iter" in p:
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = int(p["n_iter"])
    if "n_restarts" in p:
        aa.apgd.n_restarts = aa.fab.n_restarts = aa.apgd_targeted.n_restarts = int(p["n_restarts"])
    if "n_target_classes" in p:
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = int(p["n_target_classes"])
    if "n_queries" in p:
        aa.square.n_queries = int(p["n_queries"])
    aa.logger.setLevel(logging.ERROR)
    return aa


def autoattack_by_attack(aa, x0: torch.Tensor, labels: torch.Tensor):
    """Run aa's attacks one by one on the still-robust samples.

    Returns (x_adv, broken_by: per sample None | 'clean' | attack name, robust_after: {'clean'|attack: count}).
    """
    n = x0.shape[0]
    with torch.no_grad():
        alive = aa.get_logits(x0).argmax(1) == labels
    broken_by = [None if a else "clean" for a in alive.tolist()]
    x_adv = x0.clone()
    acc = {"clean": int(alive.sum())}
    attacks = list(aa.attacks_to_run)
    try:
        for name in attacks:
            idx = alive.nonzero().flatten()
            if idx.numel() == 0:
                break
            aa.attacks_to_run = [name]
            xa, ya = aa.run_standard_evaluation(x0[idx], labels[idx], batch_size=max(n, 1))
            hit = ya != labels[idx]
            x_adv[idx[hit]] = xa[hit].to(x_adv.dtype)
            alive[idx[hit]] = False
            for j in idx[hit].tolist():
                broken_by[j] = name
            acc[name] = int(alive.sum())
    finally:
        aa.attacks_to_run = attacks
    return x_adv, broken_by, acc


def run_autoattack(f, x0, y, spec: AttackSpec, seeds, opts: AttackOptions) -> AttackResult:
    E, B = len(spec.eps), x0.shape[0]
    pred0, zero_grad, rejected_clean = clean_pass(f, x0, y, f32=opts.f32)
    labels = pred0 if spec.protocol == "paper" else y
    seed = autoattack_seed(seeds)
    robust = torch.zeros(E, B, dtype=torch.bool, device=x0.device)
    adv_pred = pred0.expand(E, B).clone()
    per_eps, rejected = [], []
    devices = [x0.device] if x0.device.type == "cuda" else []
    for k, e in enumerate(spec.eps):
        with torch.random.fork_rng(devices=devices):
            aa = make_autoattack(f, spec, e, seed, x0.device)
            x_adv, broken_by, acc = autoattack_by_attack(aa, x0, labels)
        check_adversarial(x_adv, x0, e, spec.norm, opts.clip, f"AutoAttack-{spec.version}")
        with torch.no_grad():
            p = f(x_adv).argmax(1)
        p, rej = confirm(opts.f32, x_adv, y, p)
        rejected.append(rejected_clean + (0 if rej is None else int(rej.sum())))
        robust[k] = (p == y) & ((pred0 == y) | (spec.protocol == "paper"))
        adv_pred[k] = p
        per_eps.append({"robust_after": acc, "broken_by": broken_by})
    return AttackResult(robust=robust, adv_pred=adv_pred, zero_grad=zero_grad,
                        info={"clean_correct": (pred0 == y).tolist(), "autoattack_seed": seed, "per_eps": per_eps,
                              "rejected_hits": rejected})


def parse_autoattack(d: dict, kw: dict, params: dict, where: str) -> AttackSpec:
    kw["version"] = choice(d.get("version", "standard"), AA_VERSIONS, "AutoAttack version")
    for k in params:
        choice(k, AA_OVERRIDES, "AutoAttack parameter")
    if kw["version"] != "custom" and params:
        raise RobenchError(f"{where}: AutoAttack '{kw['version']}' takes no overrides ({', '.join(params)}); "
                           "use version = 'custom' for a modified AutoAttack")
    if kw["version"] == "custom":
        attacks = params.get("attacks")
        if not attacks or not isinstance(attacks, list):
            raise RobenchError(f"{where}: AutoAttack 'custom' needs params.attacks, e.g. ['apgd-ce', 'apgd-t']")
        for a in attacks:
            choice(a, AA_ATTACKS, "AutoAttack attack")
        for k in ("n_iter", "n_restarts", "n_target_classes", "n_queries"):
            if k in params:
                params[k] = positive_int(params[k], f"params.{k}")
    kw["steps"] = int(params.get("n_iter", 100))
    kw.update(step_size="apgd", random_start=True, restarts=1)
    return AttackSpec(**kw, params=params)


def label_autoattack(s: AttackSpec) -> str:
    extra = f": {'+'.join(s.params.get('attacks', []))}" if s.version == "custom" else ""
    return f"AutoAttack-{s.version}{extra} {s.norm_label}"


AUTOATTACK = register_kind(AttackKind("autoattack", parse=parse_autoattack, run=run_autoattack,
                                      label=label_autoattack, order=2, batch_random=True))
