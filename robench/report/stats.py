"""Statistics on per-sample outcomes (pure functions): Wilson intervals, paired McNemar tests, corruption errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robench.intervals import Z95, wilson  # noqa: F401  (re-exported: the statistics of reports)


# ---- paired and unpaired comparisons ---------------------------------------------------------------------------

def mcnemar_exact(b: int, c: int, alternative: str = "two-sided") -> float:
    """Exact McNemar test on the discordant pairs: b = pairs where A is right and B wrong, c = A wrong and B right.

    Under H0 (equal accuracy) b ~ Binomial(b + c, 1/2). alternative: "two-sided" (p = min(1, 2 P(X <= min(b, c)))),
    "greater" (H1: A more accurate than B; p = P(X >= b)), "less" (H1: A less accurate; p = P(X <= b)).
    Returns 1.0 when there are no discordant pairs.
    """
    from scipy.stats import binom

    b, c = int(b), int(c)
    m = b + c
    if m == 0:
        return 1.0
    if alternative == "two-sided":
        return float(min(1.0, 2.0 * binom.cdf(min(b, c), m, 0.5)))
    if alternative == "greater":
        return float(binom.sf(b - 1, m, 0.5))
    if alternative == "less":
        return float(binom.cdf(b, m, 0.5))
    raise ValueError(f"alternative must be two-sided, greater or less, not {alternative!r}")


def _newcombe(p1: float, p2: float, n1: int, n2: int, k1: int, k2: int, phi: float, z: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 - p2 from the two Wilson intervals and their correlation phi
    (Newcombe 1998, Stat. Med. 17: 'method 10' for paired data; phi = 0 gives the unpaired 'method 10' of the
    companion paper)."""
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, lo), min(1.0, hi)


@dataclass(frozen=True)
class Difference:
    """acc_b - acc_a with its 95% interval and p-value. For paired data b/c are the discordant counts."""

    n: int
    acc_a: float
    acc_b: float
    diff: float
    ci_low: float
    ci_high: float
    p: float
    test: str  # "mcnemar" (paired, exact) or "two-proportion" (unpaired z test)
    b: int | None = None  # A right, B wrong
    c: int | None = None  # A wrong, B right


def paired_difference(a_correct, b_correct, z: float = Z95) -> Difference:
    """Paired comparison of two classifiers on the same samples (0/1 outcome arrays aligned by sample).

    diff = acc(B) - acc(A); the 95% interval is Newcombe's hybrid score interval for paired proportions (method 10,
    Newcombe 1998), which stays inside [-1, 1] and behaves well near 0 and 1 and on small n, unlike Wald;
    p is the exact two-sided McNemar test.
    """
    import numpy as np

    a = np.asarray(a_correct).astype(bool).ravel()
    bb = np.asarray(b_correct).astype(bool).ravel()
    if len(a) != len(bb):
        raise ValueError(f"outcome arrays differ in length ({len(a)} vs {len(bb)})")
    n = len(a)
    if n == 0:
        return Difference(0, math.nan, math.nan, math.nan, math.nan, math.nan, 1.0, "mcnemar", 0, 0)
    both = int((a & bb).sum())
    b = int((a & ~bb).sum())  # A right, B wrong
    c = int((~a & bb).sum())  # A wrong, B right
    d = n - both - b - c
    ka, kb = both + b, both + c
    # correlation of the two marginals, with Newcombe's continuity correction of the numerator
    denom = math.sqrt((both + b) * (c + d) * (both + c) * (b + d))
    num = both * d - b * c
    num = num - n / 2 if num > n / 2 else (0.0 if num >= 0 else num)
    phi = num / denom if denom > 0 else 0.0
    # interval for acc(B) - acc(A): swap roles in the p1 - p2 formula
    lo, hi = _newcombe(kb / n, ka / n, n, n, kb, ka, phi, z)
    return Difference(n, ka / n, kb / n, (kb - ka) / n, lo, hi, mcnemar_exact(b, c), "mcnemar", b, c)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int, alternative: str = "two-sided") -> float:
    """Pooled two-proportion z test of p1 = k1/n1 against p2 = k2/n2 (independent samples).

    alternative: "two-sided", "greater" (H1: p1 > p2) or "less" (H1: p1 < p2). Returns 1.0 when the pooled
    proportion is 0 or 1 (no variance: the two cannot differ) or either n is 0.
    """
    from scipy.stats import norm

    if n1 <= 0 or n2 <= 0:
        return 1.0
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    zval = (p1 - p2) / se
    if alternative == "two-sided":
        return float(min(1.0, 2 * norm.sf(abs(zval))))
    if alternative == "greater":
        return float(norm.sf(zval))
    if alternative == "less":
        return float(norm.cdf(zval))
    raise ValueError(f"alternative must be two-sided, greater or less, not {alternative!r}")


def unpaired_difference(k_a: int, n_a: int, k_b: int, n_b: int, z: float = Z95) -> Difference:
    """acc(B) - acc(A) for independent samples: Newcombe's hybrid score interval and the two-sided z test."""
    if n_a <= 0 or n_b <= 0:
        return Difference(0, math.nan, math.nan, math.nan, math.nan, math.nan, 1.0, "two-proportion")
    lo, hi = _newcombe(k_b / n_b, k_a / n_a, n_b, n_a, k_b, k_a, 0.0, z)
    return Difference(min(n_a, n_b), k_a / n_a, k_b / n_b, k_b / n_b - k_a / n_a, lo, hi,
                      two_proportion_test(k_a, n_a, k_b, n_b), "two-proportion")


# ---- corruption metrics (Hendrycks & Dietterich 2019) ------------------------------------------------------------

SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class AlexNetTable:
    """The ImageNet-C normaliser: AlexNet's top-1 error per corruption (averaged over the 5 severities) and clean."""

    err: dict  # corruption -> error in [0, 1]
    clean_err: float


def corruption_error(errors, alexnet_err: float) -> float:
    """CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c} over the 5 severities. Only the severity-averaged AlexNet error
    is published per corruption, so sum_s E^AlexNet_{s,c} = 5 * alexnet_err."""
    errors = list(errors)
    if len(errors) != len(SEVERITIES):
        raise ValueError(f"CE needs the error at all {len(SEVERITIES)} severities, got {len(errors)}")
    return sum(errors) / (len(SEVERITIES) * alexnet_err)


def relative_corruption_error(errors, clean_err: float, alexnet_err: float, alexnet_clean_err: float) -> float:
    """Relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean)
    = sum_s (E_{s,c} - E_clean) / (5 * (alexnet_err - alexnet_clean_err))."""
    errors = list(errors)
    if len(errors) != len(SEVERITIES):
        raise ValueError(f"relative CE needs the error at all {len(SEVERITIES)} severities, got {len(errors)}")
    return sum(e - clean_err for e in errors) / (len(SEVERITIES) * (alexnet_err - alexnet_clean_err))


@dataclass
class CorruptionSummary:
    """Aggregates of one model's corruption cells (accuracies and errors as fractions).

    mean_acc: mean over the benchmark corruptions (category != 'extra') of each corruption's mean accuracy over the
    severities present; category_acc: the same per category; extra_acc: each extra corruption's mean accuracy
    (extras never enter CE/mCE). ce / rel_ce: per corruption with all 5 severities and an AlexNet figure.
    mce / rel_mce: mean CE over EVERY corruption of the AlexNet table, None when any corruption or severity is
    missing (never computed on a partial set); `note` then says why.
    """

    mean_acc: float | None = None
    category_acc: dict = field(default_factory=dict)
    extra_acc: dict = field(default_factory=dict)
    ce: dict = field(default_factory=dict)
    rel_ce: dict = field(default_factory=dict)
    mce: float | None = None
    rel_mce: float | None = None
    note: str = ""


def corruption_summary(acc: dict, categories: dict, clean_acc: float | None = None,
                       alexnet: AlexNetTable | None = None) -> CorruptionSummary:
    """Corruption aggregates from acc = {(corruption, severity): accuracy} and categories = {corruption: category}."""
    out = CorruptionSummary()
    by_corruption: dict = {}
    for (c, s), a in acc.items():
        by_corruption.setdefault(c, {})[int(s)] = float(a)
    means = {c: sum(v.values()) / len(v) for c, v in by_corruption.items()}
    bench = [c for c in means if categories.get(c) != "extra"]
    out.extra_acc = {c: means[c] for c in means if categories.get(c) == "extra"}
    if bench:
        out.mean_acc = sum(means[c] for c in bench) / len(bench)
        for cat in sorted({categories.get(c) or "other" for c in bench}):
            cs = [c for c in bench if (categories.get(c) or "other") == cat]
            out.category_acc[cat] = sum(means[c] for c in cs) / len(cs)
    if alexnet is None:
        out.note = "mCE not computed: no AlexNet error table (ImageNet-C suite) available"
        return out
    for c, sev in by_corruption.items():
        if c in alexnet.err and all(s in sev for s in SEVERITIES):
            errs = [1 - sev[s] for s in SEVERITIES]
            out.ce[c] = corruption_error(errs, alexnet.err[c])
            if clean_acc is not None:
                out.rel_ce[c] = relative_corruption_error(errs, 1 - clean_acc, alexnet.err[c], alexnet.clean_err)
    missing = [c for c in alexnet.err if c not in out.ce]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        out.note = (f"mCE not computed: {len(missing)} of {len(alexnet.err)} ImageNet-C corruptions lack results at "
                    f"all 5 severities ({shown})")
        return out
    out.mce = sum(out.ce[c] for c in alexnet.err) / len(alexnet.err)
    if clean_acc is not None:
        out.rel_mce = sum(out.rel_ce[c] for c in alexnet.err) / len(alexnet.err)
    else:
        out.note = "relative mCE not computed: no clean accuracy"
    return out
