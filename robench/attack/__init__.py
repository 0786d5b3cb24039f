"""Attack engine: FGSM/PGD (L∞, L2) with batched eps sweeps and exact early exit, AutoAttack (pyautoattack),
an optional torchattacks backend, invariants on every adversarial batch, and gradient-masking sanity flags.

    specs = load_attack_suite("pgd", eps="2/255,4/255")
    res = run_attack(model, x, y, specs[0], seeds)      # res.robust: [n_eps, B] bool

Layout (bottom up, no import cycle): `base` (kind registry, AttackResult, invariant checks, clean pass) →
`draws` (counter-based random draws) → `spec` (AttackSpec, parsing) → one module per kind, each registering itself
(`pgd`, `fgsm`, `autoattack`, `torchattacks_backend`) → `core` (run_attack) → `sanity`. Importing this package
imports every kind module, so the registry is complete. To add a kind: one module that defines its parser, runner
and label and calls `register_kind(AttackKind(...))`, imported below, plus its test.

See robench.attack.core for the protocols (standard / paper) and invariants, robench.attack.pgd for the exact
algorithm and early-exit rules.
"""

from robench.attack import autoattack, fgsm, pgd, torchattacks_backend  # noqa: F401  (registers the kinds)
from robench.attack.base import (AttackInvariantError, AttackKind, AttackResult, attack_kinds, check_adversarial,
                                 get_kind, kind_names, register_kind)
from robench.attack.core import run_attack
from robench.attack.pgd import project
from robench.attack.sanity import large_eps_probe, sanity_flags
from robench.attack.spec import AttackSpec, fmt_eps, load_attack_suite, parse_eps, parse_step_size

__all__ = ["AttackSpec", "AttackResult", "AttackInvariantError", "load_attack_suite", "run_attack", "parse_eps",
           "parse_step_size", "fmt_eps", "sanity_flags", "large_eps_probe", "check_adversarial", "project",
           "AttackKind", "register_kind", "get_kind", "kind_names", "attack_kinds"]
