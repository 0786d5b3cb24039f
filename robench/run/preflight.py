"""One validation pass before any work: a plan is checked whole before a store is created or a model is loaded.

Checks (each failure is a one-line RobenchError): plan values and their types (Plan.validate), the output
directory (creatable, writable), the data spec, the corruption suites and names, every model (known name, its
checkpoint present, or weights shipped, or `random_init` asked for), and every attack's eps range (L∞ eps above 1,
or L2 eps beyond the image's diameter √(C·H·W), only with `allow_large_eps`). Nothing here builds a model or
reads an image.
"""

from __future__ import annotations

import math
from pathlib import Path

from robench.attack import load_attack_suite
from robench.common import fmt_eps
from robench.corrupt import get_suite
from robench.data.formats import parse_data
from robench.errors import RobenchError
from robench.paths import check_dir, check_file
from robench.run.plan import Plan, suite_corruptions
from robench.run.store import store_path
from robench.zoo.sources import check_entry



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


def check_eps(plan: Plan, infos) -> None:
    """Every attack eps within the image's range, unless plan.allow_large_eps."""
    if plan.allow_large_eps or not plan.attacks:
        return
    for name in plan.attacks:
        for spec in load_attack_suite(name, eps=plan.eps, steps=plan.steps):
            for info in infos:  # a user model's input size is known only once built: L-inf bound only
                if info is None and spec.norm != "Linf":
                    continue
                limit = (eps_limit(spec.norm, info.input_size, spec.protocol, info.std) if info is not None
                         else eps_limit(spec.norm, (3, 1, 1)))
                big = [e for e in spec.eps if e > limit + 1e-9]
                if big:
                    what = ("1 (images are in [0, 1])" if spec.norm == "Linf" else
                            f"{limit:.4g}, the diameter of a {'x'.join(map(str, info.input_size))} image")
                    if spec.protocol != "standard":
                        what += " in normalised units"
                    raise RobenchError(f"attack {spec.name}: {spec.norm} eps {fmt_eps(big[0], spec.norm)} "
                                       f"(= {big[0]:.4g}) is larger than {what}; eps is in pixel units "
                                       "(e.g. 8/255); pass --allow-large-eps (plan: allow_large_eps = true) to "
                                       "run it anyway")


def check_corruptions(plan: Plan) -> None:
    if not plan.corruptions:
        return
    for name in plan.corruptions:
        suite_corruptions(get_suite(name), plan)


def preflight(plan: Plan) -> list:
    """Validate the whole plan before any file is written or model built. Returns the models' static infos."""
    plan.validate()
    parse_data(plan.data)
    check_output(plan)
    infos = [check_entry(m) for m in plan.models]
    check_corruptions(plan)
    check_eps(plan, infos)
    return infos
