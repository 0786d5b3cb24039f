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
from dataclasses import dataclass

import torch

from robench.attack.base import AttackKind, RunContext, forked_rng, register_kind
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
    from pyautoattack import AutoAttack  # a dependency; local: its import costs time only AutoAttack runs need
    o: AutoAttackOptions = spec.options
    p = o.overrides()
    aa = AutoAttack(f, norm=spec.norm, eps=float(eps), version=o.version, seed=int(seed), device=device,
                    attacks=list(o.attacks) if o.version == "custom" else None)
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


def attack_autoattack(f, x, labels, eps: float, spec: AttackSpec, seeds, ctx: RunContext):
    """AutoAttack's adversarial images of the batch at one eps, and which of its attacks broke each sample."""
    seed = autoattack_seed(ctx.batch_seeds)
    with forked_rng(x.device):
        aa = make_autoattack(f, spec, eps, seed, x.device)
        x_adv, broken_by, acc = autoattack_by_attack(aa, x, labels)
    return x_adv, {"robust_after": acc, "broken_by": broken_by, "autoattack_seed": seed}


@dataclass(frozen=True)
class AutoAttackOptions:
    """version: standard | plus | rand | custom; the rest only for 'custom' (None: AutoAttack's default)."""

    version: str = "standard"
    attacks: tuple = ()
    n_iter: int | None = None
    n_restarts: int | None = None
    n_target_classes: int | None = None
    n_queries: int | None = None

    def overrides(self) -> dict:
        d = {k: getattr(self, k) for k in AA_OVERRIDES if getattr(self, k) not in (None, ())}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def identity(self) -> dict:
        """The values hashed into cell ids, in the layout stored cells were written with."""
        return {"steps": self.n_iter or 100, "step_size": "apgd", "random_start": True, "restarts": 1,
                "loss": "ce", "targeted": False, "version": self.version, "params": self.overrides()}


def parse_autoattack(table: dict, common: dict, where: str) -> AttackSpec:
    version = choice(table.get("version", "standard"), AA_VERSIONS, "AutoAttack version")
    params = dict(table.get("params", {}))
    for k in params:
        choice(k, AA_OVERRIDES, "AutoAttack parameter")
    if version != "custom" and params:
        raise RobenchError(f"{where}: AutoAttack '{version}' takes no overrides ({', '.join(params)}); "
                           "use version = 'custom' for a modified AutoAttack")
    if version != "custom":
        return AttackSpec(**common, options=AutoAttackOptions(version))
    attacks = params.pop("attacks", None)
    if not attacks or not isinstance(attacks, list):
        raise RobenchError(f"{where}: AutoAttack 'custom' needs params.attacks, e.g. ['apgd-ce', 'apgd-t']")
    for a in attacks:
        choice(a, AA_ATTACKS, "AutoAttack attack")
    counts = {k: positive_int(v, f"params.{k}") for k, v in params.items()}
    return AttackSpec(**common, options=AutoAttackOptions(version, tuple(attacks), **counts))


def label_autoattack(s: AttackSpec) -> str:
    o: AutoAttackOptions = s.options
    extra = f": {'+'.join(o.attacks)}" if o.version == "custom" else ""
    return f"AutoAttack-{o.version}{extra} {s.norm_label}"


# whole_batch: pyautoattack gets the whole chunk (its own clean check included), as one run_standard_evaluation
AUTOATTACK = register_kind(AttackKind("autoattack", parse=parse_autoattack, attack=attack_autoattack,
                                      label=label_autoattack, order=2, keys=("version", "params"),
                                      batch_random=True, whole_batch=True))
