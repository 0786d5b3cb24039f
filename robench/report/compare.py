"""Paired comparison of two models (or two runs of one model) on the cells they share.

Cells are matched on (dataset, threat, attack, norm, eps, corruption, severity, protocol, adaptive) and samples on
their index: with per-sample outcomes on both sides the difference is paired (Newcombe interval, exact McNemar
test); otherwise (a CSV side, or no shared samples) the two accuracies are compared as independent proportions.
p-values are per cell, not adjusted for multiple comparisons.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robench.errors import RobenchError, suggest
from robench.report.leaderboard import markdown_table
from robench.report.results import CELL_KEY, cell_label, cell_sort_key, index_rows, normalize
from robench.report.stats import (Difference, mcnemar_exact, paired_difference, two_proportion_test,
                                  unpaired_difference)
from robench.run.store import Store, store_path


def check_alpha(alpha) -> float:
    """A significance level: a finite number in (0, 1); RobenchError otherwise."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise RobenchError(f"--alpha must be a number in (0, 1), got {alpha!r}") from None
    if not (math.isfinite(a) and 0 < a < 1):
        raise RobenchError(f"--alpha must be in (0, 1) (a significance level such as 0.05), got {alpha}")
    return a


def difference(row_a, row_b, out_a: pd.DataFrame | None = None, out_b: pd.DataFrame | None = None,
               alternative: str = "two-sided") -> Difference:
    """acc(B) - acc(A) for one cell. Paired on the shared sample indices when both outcome tables are given and
    overlap, else unpaired from (value, n). alternative="greater" tests H1: A more accurate than B (a drop)."""
    if out_a is not None and out_b is not None and len(out_a) and len(out_b):
        m = out_a.merge(out_b, on="sample", suffixes=("_a", "_b"))
        if len(m):
            d = paired_difference(m["correct_a"].to_numpy(), m["correct_b"].to_numpy())
            if alternative != "two-sided":
                d = Difference(**{**d.__dict__, "p": mcnemar_exact(d.b, d.c, alternative)})
            return d
    n_a, n_b = int(row_a["n"]), int(row_b["n"])
    k_a, k_b = round(float(row_a["value"]) * n_a), round(float(row_b["value"]) * n_b)
    d = unpaired_difference(k_a, n_a, k_b, n_b)
    if alternative != "two-sided":
        d = Difference(**{**d.__dict__, "p": two_proportion_test(k_a, n_a, k_b, n_b, alternative)})
    return d


def compare_tables(ta: pd.DataFrame, tb: pd.DataFrame, outcomes_a=None, outcomes_b=None, alpha: float = 0.05,
                   alternative: str = "two-sided") -> pd.DataFrame:
    """Compare the shared cells of two one-model tables (normalized results rows). outcomes_x(row) returns the
    per-sample outcomes of a row (or None). Returns one row per shared cell: dataset, cell, n, acc_a, acc_b, diff
    (= acc_b - acc_a), ci_low, ci_high, p, test, significant (p < alpha)."""
    key = list(CELL_KEY)
    a, b = index_rows(ta, CELL_KEY), index_rows(tb, CELL_KEY)
    rows = []
    for k in [k for k in a if k in b]:
        ra, rb = a[k], b[k]
        d = difference(ra, rb, outcomes_a(ra) if outcomes_a else None, outcomes_b(rb) if outcomes_b else None,
                       alternative)
        rows.append({**{c: ra[c] for c in key}, "category": ra.get("category"), "cell": cell_label(ra),
                     "n": d.n, "acc_a": d.acc_a, "acc_b": d.acc_b, "diff": d.diff, "ci_low": d.ci_low,
                     "ci_high": d.ci_high, "p": d.p, "test": d.test, "significant": bool(d.p < alpha)})
    df = pd.DataFrame(rows, columns=key + ["category", "cell", "n", "acc_a", "acc_b", "diff", "ci_low", "ci_high",
                                           "p", "test", "significant"])
    if len(df):
        df = df.iloc[sorted(range(len(df)), key=lambda i: cell_sort_key(df.iloc[i]))].reset_index(drop=True)
    return df


def _model_table(store, label: str) -> pd.DataFrame:
    t = normalize(store.results())
    return t[t["model"] == label]


def resolve(spec: str, default_store=None):
    """'LABEL' (in default_store), 'LABEL@DIR', or 'DIR' (its only model) -> (Store, label)."""
    label, where = spec, default_store
    if "@" in spec and Path(spec.rsplit("@", 1)[1]).exists():
        label, where = spec.rsplit("@", 1)
    elif Path(spec).exists() and store_path(spec).exists():
        label, where = None, spec
    if where is None:
        raise RobenchError(f"'{spec}' is neither a results directory nor LABEL@DIR, and no --store was given")
    store = where if isinstance(where, Store) else Store(where, readonly=True)
    labels = list(dict.fromkeys(store.results()["model"]))
    if label is None:
        if len(labels) != 1:
            raise RobenchError(f"{spec} holds {len(labels)} models ({', '.join(labels) or 'none'}); name one as "
                               f"LABEL@{spec}")
        label = labels[0]
    elif label not in labels:
        raise RobenchError(f"no model '{label}' in {store.path}" + suggest(label, labels)
                           + f"; models: {', '.join(labels) or 'none'}")
    return store, label


def compare(a: str, b: str, store=None, alpha: float = 0.05) -> pd.DataFrame:
    """Paired comparison of model B against model A on their shared cells (diff = B - A).

    a, b: model labels in `store`, 'LABEL@DIR' or a results directory holding one model (two runs of one model
    live in two out dirs). Returns compare_tables' rows; attrs a / b name the two sides.
    """
    check_alpha(alpha)
    sa, la = resolve(a, store)
    sb, lb = resolve(b, store)
    if sa.path == sb.path and la == lb:
        raise RobenchError(f"compare needs two different models or runs; both sides are '{la}' in {sa.path}")
    df = compare_tables(_model_table(sa, la), _model_table(sb, lb), lambda r: sa.outcomes(int(r["cell_id"])),
                        lambda r: sb.outcomes(int(r["cell_id"])), alpha)
    if df.empty:
        raise RobenchError(f"'{la}' and '{lb}' share no evaluated cells (same dataset, threat and parameters)")
    name_a = la if sa.path == sb.path else f"{la}@{sa.path.parent}"
    name_b = lb if sa.path == sb.path else f"{lb}@{sb.path.parent}"
    df.attrs.update(a=name_a, b=name_b, alpha=alpha)
    return df


def _pp(v, signed=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "<0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def comparison_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    a, b = df.attrs.get("a", "A"), df.attrs.get("b", "B")
    header = ["dataset", "cell", "n", f"{a} %", f"{b} %", "Δ pp", "95% CI (pp)", "p", "test", "significant"]
    rows = [[r.dataset, r.cell, str(r.n), _pp(r.acc_a), _pp(r.acc_b), _pp(r.diff, True),
             f"[{_pp(r.ci_low, True)}, {_pp(r.ci_high, True)}]", fmt_p(r.p), r.test,
             ("yes, B better" if r.diff > 0 else "yes, B worse") if r.significant else "no"]
            for r in df.itertuples()]
    return header, rows


def summary_line(df: pd.DataFrame) -> str:
    a, b, alpha = df.attrs.get("a", "A"), df.attrs.get("b", "B"), df.attrs.get("alpha", 0.05)
    better = int((df["significant"] & (df["diff"] > 0)).sum())
    worse = int((df["significant"] & (df["diff"] < 0)).sum())
    return (f"{b} vs {a} on {len(df)} shared cells: significantly better on {better}, worse on {worse}, no "
            f"significant difference on {len(df) - better - worse} (alpha {alpha}; p per cell, unadjusted).")


def format_comparison(df: pd.DataFrame, md: bool = False) -> str:
    """Markdown (for a PR comment) of a comparison; the terminal uses comparison_rows with rich."""
    header, rows = comparison_rows(df)
    a, b = df.attrs.get("a", "A"), df.attrs.get("b", "B")
    text = f"### robench compare: {b} vs {a}\n\n" + markdown_table(header, rows, right={2, 3, 4, 5, 6, 7})
    return text + "\n\n" + summary_line(df) + " Δ = B − A in percentage points; paired tests are exact McNemar.\n"
