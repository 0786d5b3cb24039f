"""FGSM — the fast gradient sign method (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
Examples", ICLR 2015), and its L2 form (one normalised-gradient step).

Distance: L∞ (x + eps·sign(∇ₓL)) or L2 (x + eps·∇ₓL/‖∇ₓL‖₂), clipped to [0, 1] under the standard protocol.
Shapes: x (B, C, H, W) in [0, 1], y (B,) long; result robust / adv_pred (n_eps, B).

FGSM is PGD with one step of size eps from the clean input (no random start): it runs on PGD's engine
(robench.attack.pgd), which reuses the clean pass's gradient for that step, so FGSM costs one fwd+bwd per sample
for all eps plus one forward per (sample, eps) row.
"""

from __future__ import annotations

from robench.attack.base import AttackKind, register_kind
from robench.attack.pgd import GRADIENT_KEYS, PGD_KEYS, gradient_options, run_pgd
from robench.attack.spec import AttackSpec
from robench.errors import RobenchError

FIXED = {"steps": 1, "step_size": "1*eps", "random_start": False, "restarts": 1}


def parse_fgsm(table: dict, common: dict, where: str) -> AttackSpec:
    for k, v in FIXED.items():
        if k in table and table[k] != v:
            raise RobenchError(f"{where}: FGSM is one step of size eps without random start; drop '{k}' "
                               "or use kind = 'pgd'")
    return AttackSpec(**common, options=gradient_options(table, where, **FIXED))


def label_fgsm(s: AttackSpec) -> str:
    return f"FGSM {s.norm_label}"


# FIXED's keys are accepted (with their fixed values), as before: a PGD table with kind = "fgsm" stays valid
FGSM = register_kind(AttackKind("fgsm", parse=parse_fgsm, fused=run_pgd, label=label_fgsm, order=0,
                                keys=tuple(k for k in PGD_KEYS if k in FIXED) + GRADIENT_KEYS, keeps_adv=True))
