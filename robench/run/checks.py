"""Checks of the resolve step (robench.run.resolve) that need no model and read no image: the output path and
every attack's eps range (L∞ eps above 1, or L2 eps beyond the image's diameter √(C·H·W), only with
`allow_large_eps`). Each failure is a one-line RobenchError.
"""

from __future__ import annotations

import math
from pathlib import Path

from robench.labels import fmt_eps
from robench.errors import RobenchError
from robench.paths import check_dir, check_file
from robench.run.plan import Plan
from robench.run.store import store_path


def check_output(plan: Plan) -> None:
    path = store_path(plan.out)
    if path.name == Path(plan.out).name:  # --out points at the .sqlite file itself
        check_file(path, "results store")
    else:
        check_dir(plan.out, "output directory")
        if path.exists():
            check_file(path, "results store")


def eps_limit(norm: str, input_size, protocol: str = "standard", std=None) -> float:
    """The largest meaningful eps of a norm on images of input_size (C, H, W) in [0, 1]: 1 for L∞, the diameter
    √(C·H·W) for L2; under the paper protocol (normalised units) divided by the smallest std."""
    c, h, w = (tuple(input_size) + (1, 1, 1))[:3]
    limit = 1.0 if norm == "Linf" else math.sqrt(c * h * w) if norm == "L2" else math.inf
    if protocol != "standard" and std:
        limit /= min(std)
    return limit


def check_spec_eps(specs, infos) -> None:
    """Every eps of the (loaded) attack specs within the image's range of every model (static infos; None for
    user code, whose input size is known only once built: L∞ bound only)."""
    for spec in specs:
        for info in infos:
            if info is None and spec.norm != "Linf":
                continue
            limit = (eps_limit(spec.norm, info.input_size, spec.protocol, info.std) if info is not None
                     else eps_limit(spec.norm, (3, 1, 1)))
            big = [e for e in spec.eps if limit + 1e-9 < e < float("inf")]  # inf: a min-norm attack
            if big:
                what = ("1 (images are in [0, 1])" if spec.norm == "Linf" else
                        f"{limit:.4g}, the diameter of a {'x'.join(map(str, info.input_size))} image")
                if spec.protocol != "standard":
                    what += " in normalised units"
                raise RobenchError(f"attack {spec.name}: {spec.norm} eps {fmt_eps(big[0], spec.norm)} "
                                   f"(= {big[0]:.4g}) is larger than {what}; eps is in pixel units "
                                   "(e.g. 8/255); pass --allow-large-eps (plan: allow_large_eps = true) to "
                                   "run it anyway")


def check_eps(plan: Plan, infos) -> None:
    """check_spec_eps on the plan's attack suites, unless plan.allow_large_eps (a standalone check; a run loads
    the suites once, in resolve)."""
    from robench.attack import load_attack_suite  # local: robench.attack imports torch

    if plan.allow_large_eps or not plan.attacks:
        return
    check_spec_eps([s for name in plan.attacks for s in load_attack_suite(name, eps=plan.eps, steps=plan.steps)],
                   infos)

