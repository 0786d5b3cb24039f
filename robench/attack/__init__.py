"""Attack engine: FGSM/PGD (L∞, L2) with batched eps sweeps and exact early exit, AutoAttack (pyautoattack),
an optional torchattacks backend, invariants on every adversarial batch, and gradient-masking sanity flags.

    specs = load_attack_suite("pgd", eps="2/255,4/255")
    res = run_attack(model, x, y, specs[0], seeds)      # res.robust: [n_eps, B] bool

Layout (bottom up, no import cycle): `base` (kind registry, AttackResult, invariant checks, clean pass) →
`draws` (counter-based random draws) → `spec` (AttackSpec, parsing) → `steps` (the projected step) → one module
per kind, each registering itself (`pgd`, `fgsm`, `fmn`, `autoattack`, `torchattacks_backend`, `patch`,
`attention_pgd`) → `core` (run_attack) → `sanity`. Importing this package imports every module in it, so the registry is complete. To add a kind: one module
in this folder that defines its parser, its `attack` (adversarial images at one eps: run_attack does the clean
pass, gating, checks and confirmation) and its label and calls `register_kind(AttackKind(...))`, plus its test
(README "Adding an attack kind"); no list to edit.

See robench.attack.core for the protocols (standard / paper) and invariants, robench.attack.pgd for the exact
algorithm and early-exit rules.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from robench.attack.base import (AttackInvariantError, AttackKind, AttackResult, RunContext, attack_kinds,
                                 check_adversarial, get_kind, kind_names, register_kind, unregister_kind)
from robench.attack.core import run_attack
from robench.attack.steps import project
from robench.attack.sanity import large_eps_probe, sanity_flags
from robench.attack.spec import AttackSpec, load_attack_suite, make_spec, parse_eps, parse_step_size
from robench.labels import fmt_eps

# Every module of this folder, so every kind module's register_kind call has run (a new kind is one module).
for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["AttackSpec", "AttackResult", "AttackInvariantError", "load_attack_suite", "make_spec", "run_attack",
           "parse_eps", "parse_step_size", "fmt_eps", "sanity_flags", "large_eps_probe", "check_adversarial",
           "project", "AttackKind", "RunContext", "register_kind", "unregister_kind", "get_kind", "kind_names",
           "attack_kinds"]
