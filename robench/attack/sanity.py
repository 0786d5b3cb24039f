"""Sanity flags: the standard signs of gradient masking / a broken evaluation, computed from one model's results.

`sanity_flags(rows, clean_acc)` with rows = [{attack, norm, eps, robust_acc, n, zero_grad_frac}, ...] (optional
keys: `kind` (a registered kind, else guessed from the attack name), `protocol`, and for AutoAttack
`acc_after` = {attack: robust acc after it}: sum `AttackResult.info['per_eps'][k]['robust_after']` (counts) over
chunks and divide by n). Flags:

  non-monotone        robust acc rises with eps (same attack and norm) by more than the margin
  pgd-weaker-than-fgsm  PGD robust acc above FGSM's at the same norm and eps by more than the margin
  large-eps-robust    robust acc above `large_eps_acc` at a large eps (≥ 64/255 L∞, ≥ 8 L2): no real model survives
  zero-grad           more than `zero_grad_frac` of the samples have an exactly zero input gradient
  square-beats-whitebox  AutoAttack's black-box Square broke samples the white-box attacks could not
  robust-above-clean  robust acc above clean accuracy (impossible for a correct evaluation)
  gradient-obfuscation  an adaptive attack (rows with `adaptive` true: gradients through a no_grad statistic,
                      e.g. elliptical's m) leaves fewer samples robust than the default attack of the same kind,
                      norm and eps beyond the margin: "gradient obfuscation: adaptive attack lowers accuracy by X pp"

Kinds whose perturbation is confined to a part of the image (Patch-Fool: k patches) are not whole-image threat
models: their rows do not enter the large-eps flag (a sparse patch at eps 1 is not "every pixel free").

The large-eps flag needs a row at a large eps: `large_eps_probe()` gives a cheap PGD spec for it.
"""

from __future__ import annotations

from collections import defaultdict

from robench.attack.base import kind_names
from robench.attack.spec import AttackSpec, make_spec
from robench.labels import fmt_eps

LARGE_EPS = {"Linf": 64 / 255, "L2": 8.0}
LOCAL_KINDS = ("patchfool",)  # perturbation confined to part of the image (not a whole-image eps ball)


def large_eps_probe(norm: str = "Linf", steps: int = 10) -> AttackSpec:
    """A PGD spec at a large eps (64/255 L∞ or 8.0 L2) on which every non-masked model should reach ~0% robust."""
    return make_spec("pgd", name="probe-large-eps", norm=norm, eps=(LARGE_EPS[norm],), steps=steps,
                     step_size="2.5*eps/steps", random_start=True)


def _kind(row) -> str:
    """The row's kind, else guessed from the attack name: the longest registered kind name it contains
    ('torchattacks:PGD' is torchattacks, not pgd)."""
    if row.get("kind"):
        return row["kind"]
    a = str(row["attack"]).lower()
    for k in sorted(kind_names(), key=len, reverse=True):
        if k in a:
            return k
    return "aa" if a.startswith("aa") else a


def _cell(row) -> str:
    return f"{row['attack']} {row['norm']} {fmt_eps(float(row['eps']), row['norm'])}"


def sanity_flags(rows: list[dict], clean_acc: float, *, margin: float = 0.01, large_eps_acc: float = 0.05,
                 zero_grad_frac: float = 0.1, square_margin: float = 0.002) -> list[dict]:
    """Flags [{flag, message, cells}] for one model's attack results (see module docstring)."""

    def noise(r):  # one sample never counts as "beyond noise"
        return max(margin, 1.0 / max(int(r.get("n") or 1), 1))

    checks = [
        ("non-monotone", "robust accuracy increases with eps (a stronger threat model cannot be easier): "
         "the attack is not converging or gradients are masked", _non_monotone(rows, noise)),
        ("pgd-weaker-than-fgsm", "iterative PGD leaves more samples robust than single-step FGSM at the same "
         "eps: a sign of gradient masking", _pgd_weaker_than_fgsm(rows, noise)),
        ("large-eps-robust", f"robust accuracy stays above {large_eps_acc:.0%} at a very large eps where "
         "every real model is broken: gradients are likely masked",
         [_cell(r) for r in rows if _kind(r) not in LOCAL_KINDS
          and float("inf") > float(r["eps"]) >= LARGE_EPS.get(r["norm"], float("inf")) - 1e-9
          and float(r["robust_acc"]) > large_eps_acc + (1.0 / max(int(r.get("n") or 1), 1))]),
        ("zero-grad", f"the input gradient is exactly zero on more than {zero_grad_frac:.0%} of the samples: "
         "gradient-based attacks cannot work (non-differentiable layer / saturation)",
         [_cell(r) for r in rows if r.get("zero_grad_frac") is not None
          and float(r["zero_grad_frac"]) > zero_grad_frac]),
        ("square-beats-whitebox", "AutoAttack's black-box Square attack broke samples the white-box attacks "
         "could not: gradient-based attacks are unreliable on this model", _square_beats_whitebox(rows, square_margin)),
        ("robust-above-clean", "robust accuracy above clean accuracy: the evaluation is inconsistent "
         "(different samples or labels?)",
         [_cell(r) for r in rows if r.get("protocol", "standard") == "standard"
          and float(r["robust_acc"]) > clean_acc + 1e-9]),
    ]
    gap, gap_cells = _adaptive_gap(rows, noise)
    checks.append(("gradient-obfuscation", f"gradient obfuscation: adaptive attack lowers accuracy by {gap:.1f} pp "
                   "(gradients through the no_grad statistic find adversarials the default attack misses)",
                   gap_cells))
    return [{"flag": flag, "message": message, "cells": cells} for flag, message, cells in checks if cells]


def _adaptive_gap(rows: list[dict], noise) -> tuple[float, list[str]]:
    """(largest gap in pp, cells): adaptive rows below the weakest-robust default row of the same kind, norm,
    eps and protocol by more than the noise margin."""
    default = defaultdict(list)
    for r in rows:
        if not r.get("adaptive"):
            default[(_kind(r), r["norm"], round(float(r["eps"]), 9), r.get("protocol", "standard"))].append(r)
    gap, cells = 0.0, []
    for r in rows:
        if not r.get("adaptive"):
            continue
        twins = default.get((_kind(r), r["norm"], round(float(r["eps"]), 9), r.get("protocol", "standard")))
        if not twins:
            continue
        d = min(twins, key=lambda t: float(t["robust_acc"]))
        g = float(d["robust_acc"]) - float(r["robust_acc"])
        if g > noise(r):
            gap = max(gap, 100 * g)
            cells += [_cell(d), _cell(r) + " adaptive"]
    return gap, sorted(set(cells), key=cells.index)


def _non_monotone(rows: list[dict], noise) -> list[str]:
    """Cells where robust accuracy rises beyond noise from one eps to the next (same attack, norm, protocol)."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["attack"], r["norm"], r.get("protocol", "standard"))].append(r)
    cells = []
    for rs in groups.values():
        rs = sorted(rs, key=lambda r: float(r["eps"]))
        for a, b in zip(rs, rs[1:]):
            if float(b["robust_acc"]) > float(a["robust_acc"]) + noise(a):
                cells += [_cell(a), _cell(b)]
    return sorted(set(cells), key=cells.index)


def _pgd_weaker_than_fgsm(rows: list[dict], noise) -> list[str]:
    """PGD cells (and their FGSM twins) where PGD leaves more samples robust than FGSM beyond noise."""
    by = {(_kind(r), r["norm"], round(float(r["eps"]), 9), r.get("protocol", "standard")): r for r in rows}
    cells = []
    for (kind, norm, eps, proto), r in by.items():
        f = by.get(("fgsm", norm, eps, proto))
        if kind == "pgd" and f is not None and float(r["robust_acc"]) > float(f["robust_acc"]) + noise(r):
            cells += [_cell(r), _cell(f)]
    return cells


def _square_beats_whitebox(rows: list[dict], square_margin: float) -> list[str]:
    """AutoAttack cells where Square (black-box) left fewer samples robust than the white-box attacks before it."""
    cells = []
    for r in rows:
        acc = r.get("acc_after") or {}
        if "square" in acc and len(acc) > 2:
            white = min(v for k, v in acc.items() if k not in ("square", "clean"))
            if acc["square"] < white - square_margin:
                cells.append(_cell(r))
    return cells
