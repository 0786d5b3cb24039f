"""AutoAttack through pyautoattack (the original algorithms: APGD-CE, APGD-T, FAB-T, Square; 100 iterations).

robench runs AutoAttack's own `run_standard_evaluation`, one attack of the version's list at a time, each on the
samples still robust (exactly what one call does internally with batch_size >= chunk, which the equivalence test
checks). That gives per-attack robust accuracy and which attack broke each sample (for the Square sanity flag).
Robust flags come from re-evaluating the model on the returned adversarial examples; AutoAttack's state file is
never used. AutoAttack's random draws are batched: its seed is derived from all per-sample seeds of the chunk.
"""

from __future__ import annotations

import logging

import torch

from robench.attack.spec import AttackSpec
from robench.errors import RobenchError
from robench.seeding import derive_seed


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


def run_autoattack(f, x0, y, spec: AttackSpec, seeds, clip: bool):
    from robench.attack.core import AttackResult, check_adversarial, clean_pass

    E, B = len(spec.eps), x0.shape[0]
    pred0, zero_grad = clean_pass(f, x0, y)
    labels = pred0 if spec.protocol == "paper" else y
    seed = autoattack_seed(seeds)
    robust = torch.zeros(E, B, dtype=torch.bool, device=x0.device)
    adv_pred = pred0.expand(E, B).clone()
    per_eps = []
    devices = [x0.device] if x0.device.type == "cuda" else []
    for k, e in enumerate(spec.eps):
        with torch.random.fork_rng(devices=devices):
            aa = make_autoattack(f, spec, e, seed, x0.device)
            x_adv, broken_by, acc = autoattack_by_attack(aa, x0, labels)
        check_adversarial(x_adv, x0, e, spec.norm, clip, f"AutoAttack-{spec.version}")
        with torch.no_grad():
            p = f(x_adv).argmax(1)
        robust[k] = (p == y) & ((pred0 == y) | (spec.protocol == "paper"))
        adv_pred[k] = p
        per_eps.append({"robust_after": acc, "broken_by": broken_by})
    return AttackResult(robust=robust, adv_pred=adv_pred, zero_grad=zero_grad,
                        info={"clean_correct": (pred0 == y).tolist(), "autoattack_seed": seed, "per_eps": per_eps})
