"""Attack engine: FGSM/PGD (L∞, L2) with batched eps sweeps and exact early exit, AutoAttack (pyautoattack),
an optional torchattacks backend, invariants on every adversarial batch, and gradient-masking sanity flags.

    specs = load_attack_suite("pgd", eps="2/255,4/255")
    res = run_attack(model, x, y, specs[0], seeds)      # res.robust: [n_eps, B] bool

See robench.attack.core for the protocols (standard / paper) and invariants, robench.attack.pgd for the exact
algorithm and early-exit rules.
"""

from robench.attack.core import AttackInvariantError, AttackResult, check_adversarial, run_attack
from robench.attack.pgd import project
from robench.attack.sanity import large_eps_probe, sanity_flags
from robench.attack.spec import AttackSpec, fmt_eps, load_attack_suite, parse_eps, parse_step_size

__all__ = ["AttackSpec", "AttackResult", "AttackInvariantError", "load_attack_suite", "run_attack", "parse_eps",
           "parse_step_size", "fmt_eps", "sanity_flags", "large_eps_probe", "check_adversarial", "project"]
