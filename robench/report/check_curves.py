"""`robench check --min-median-eps ATTACK=VALUE`: gate on the median eps* of a minimum-norm attack
(robench.report.curves: over clean-correct samples, with the same store's fixed-eps breaks of that norm).

A model fails when its median eps* for ATTACK is below VALUE (pixel units, e.g. fmn-linf=4/255). An ATTACK that
no model in the store ran is an error (exit 2), as is a malformed item — both before any work."""

from __future__ import annotations

import math

from robench.attack.spec import number
from robench.errors import RobenchError
from robench.labels import fmt_eps
from robench.report.curves import curves


def parse_min_median_eps(items) -> dict[str, float]:
    out = {}
    for item in items or []:
        attack, sep, value = str(item).partition("=")
        if not sep or not attack.strip():
            raise RobenchError(f"--min-median-eps takes ATTACK=VALUE (e.g. fmn-linf=4/255), got {item!r}")
        v = number(value, "--min-median-eps")
        if not (math.isfinite(v) and v > 0):
            raise RobenchError(f"--min-median-eps: the value must be a finite number > 0, got {value!r}")
        out[attack.strip()] = v
    return out


def median_eps_gate(store, minimums: dict[str, float]) -> tuple[str, bool]:
    """(markdown lines, any model failed) for each model x gated attack in the current store."""
    if not minimums:
        return "", False
    df = curves(store, eps=[1.0])  # one point per curve: the median is what is read
    have = set(df.attack) if len(df) else set()
    for attack in minimums:
        if attack not in have:
            raise RobenchError(f"--min-median-eps: no minimum-norm results for attack '{attack}' in {store}"
                               + (f" (have: {', '.join(sorted(have))})" if have else ""))
    lines, failed = ["", "### median eps* (minimum-norm attacks)", ""], False
    for (model, attack, norm), med in df.groupby(["model", "attack", "norm"])[
            "median_eps_star"].first().items():
        if attack not in minimums:
            continue
        bad = not (med >= minimums[attack])
        failed |= bad
        lines.append(f"- {model} · {attack}: median eps* {med:.4g} ({fmt_eps(med, norm)}) vs minimum "
                     f"{fmt_eps(minimums[attack], norm)}: {'**FAIL**' if bad else 'ok'}")
    return "\n".join(lines) + "\n", failed
