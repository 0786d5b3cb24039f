"""The CI regression gate: current results against a committed baseline.

A metric REGRESSES when both hold:
    current < baseline - tolerance   (percentage points), and
    the drop is significant at alpha: one-sided exact McNemar on the shared samples when both sides have
    per-sample outcomes (baseline given as a store), else a one-sided pooled two-proportion z test on (value, n)
    (baseline given as a CSV exported by robench).
Improvements and noise never fail. Cells are matched on (model label, dataset, threat, attack, norm, eps rounded to
1e-9, corruption, severity, protocol, adaptive). Exit codes: 0 no regression, 1 regression, 2 error (unreadable
or non-robench baseline, no overlapping cells, or baseline cells missing from the current results unless
allow_missing).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robench.errors import RobenchError
from robench.report.compare import _pp, check_alpha, difference, fmt_p
from robench.report.leaderboard import markdown_table
from robench.report.results import cell_label, cell_sort_key, index_rows, normalize
from robench.run.store import Store, store_path

REQUIRED_COLUMNS = ("model", "dataset", "threat", "attack", "norm", "eps", "corruption", "severity", "protocol",
                    "adaptive", "n", "value")
VERDICTS = ("regression", "missing", "drop, not significant", "ok", "improved")


def load_table(source):
    """A robench results CSV or a store (dir or .sqlite) -> (normalized table, outcomes(row) or None)."""
    path = Path(source)
    if not path.exists():
        raise RobenchError(f"baseline not found: {path}")
    if path.is_dir() or path.suffix in (".sqlite", ".db"):
        if path.is_dir() and not store_path(path).exists():
            raise RobenchError(f"{path} is a directory without a results store (robench.sqlite)")
        store = Store(path, readonly=True)
        table = normalize(store.results())
        _check_rows(table, path)
        return table, (lambda r: store.outcomes(int(r["cell_id"])))
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise RobenchError(f"cannot read baseline {path} as CSV ({type(e).__name__}: {str(e).splitlines()[0]})"
                           ) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise RobenchError(f"{path} is not a results CSV exported by robench (missing columns: {', '.join(missing)}; "
                           f"make one with `robench export`)")
    try:
        table = normalize(df)
        table["value"] = table["value"].astype(float)
        table["n"] = pd.to_numeric(table["n"], errors="raise").astype(float)
    except (TypeError, ValueError) as e:
        raise RobenchError(f"{path} is not a results CSV exported by robench (bad value: {e})") from None
    _check_rows(table, path)
    table["n"] = table["n"].astype(int)
    return table, None


def _usable(row) -> bool:
    n, v = row["n"], row["value"]
    return not (pd.isna(n) or pd.isna(v)) and n >= 1 and math.isfinite(float(v))


def _check_rows(table: pd.DataFrame, path) -> None:
    """Every baseline row needs a sample count n >= 1 (whole) and an accuracy in [0, 1]: a row with n = 0 or a
    NaN value can never show a regression, so it is an error rather than a pass."""
    for i, r in table.iterrows():
        line = f"{path} row {i + 2} ({cell_label(r)})"
        n, v = (math.nan if pd.isna(r[c]) else float(r[c]) for c in ("n", "value"))
        if not (math.isfinite(n) and n >= 1 and float(n).is_integer()):
            raise RobenchError(f"{line}: n must be a whole number >= 1 (samples evaluated), got {n:g}")
        if not (math.isfinite(v) and 0 <= v <= 1):
            raise RobenchError(f"{line}: value must be an accuracy in [0, 1], got {v:g}")


def check(baseline, store="results", tolerance: float = 1.0, alpha: float = 0.05,
          allow_missing: bool = False) -> tuple[pd.DataFrame, int]:
    """Compare the current results (`store`: dir or Store) with `baseline` (robench CSV, or store dir).

    Returns (rows, exit_code): one row per baseline metric with model, dataset, cell, n, baseline, current,
    delta_pp, p, test, verdict (regression | drop, not significant | ok | improved | missing); exit_code 0 / 1 / 2
    as in the module doc. Unusable inputs raise RobenchError (exit 2).
    """
    check_alpha(alpha)
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise RobenchError(f"--tolerance must be a finite number >= 0 (percentage points), got {tolerance}")
    base, base_outcomes = load_table(baseline)
    if base.empty:
        raise RobenchError(f"baseline {baseline} holds no results")
    cur_store = store if isinstance(store, Store) else Store(store, readonly=True)
    cur = normalize(cur_store.results())
    base_rows, cur_rows = index_rows(base), index_rows(cur)
    rows = []
    for k, rb in base_rows.items():
        row = {"model": rb["model"], "dataset": rb["dataset"], "cell": cell_label(rb), "n": int(rb["n"]),
               "baseline": float(rb["value"]), "current": None, "delta_pp": None, "p": None, "test": "",
               "verdict": "missing", "_sort": (rb["model"], cell_sort_key(rb))}
        if k in cur_rows and _usable(cur_rows[k]):  # a current cell without samples counts as missing
            rc = cur_rows[k]
            d = difference(rb, rc, base_outcomes(rb) if base_outcomes else None,
                           cur_store.outcomes(int(rc["cell_id"])) if base_outcomes else None, alternative="greater")
            delta = 100 * (float(rc["value"]) - float(rb["value"]))
            if delta < -tolerance:
                verdict = "regression" if d.p < alpha else "drop, not significant"
            else:
                verdict = "improved" if delta > tolerance else "ok"
            row.update(n=d.n, current=float(rc["value"]), delta_pp=delta, p=d.p, test=d.test, verdict=verdict)
        rows.append(row)
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(base["model"]))
    df["_m"] = df["model"].map(order.index)
    df = df.sort_values(["_m", "_sort"], kind="stable").drop(columns=["_m", "_sort"]).reset_index(drop=True)
    n_missing = int((df["verdict"] == "missing").sum())
    if n_missing == len(df):
        raise RobenchError(f"no overlapping cells: none of the {len(df)} baseline metrics is in the current results "
                           f"({cur_store.path}); models there: {', '.join(dict.fromkeys(cur['model'])) or 'none'}")
    code = 2 if n_missing and not allow_missing else int((df["verdict"] == "regression").any())
    df.attrs.update(tolerance=tolerance, alpha=alpha, baseline=str(baseline), store=str(cur_store.path.parent),
                    exit_code=code, new_cells=len(set(cur_rows) - set(base_rows)))
    return df, code


def format_check(df: pd.DataFrame) -> str:
    """Markdown for a CI job summary: a verdict line, every compared metric, and the rule applied."""
    code, tol, alpha = df.attrs.get("exit_code", 0), df.attrs.get("tolerance", 1.0), df.attrs.get("alpha", 0.05)
    counts = df["verdict"].value_counts().to_dict()
    status = {0: "PASS", 1: "FAIL: robustness regressed", 2: "ERROR: baseline cells missing"}[code]
    parts = ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts.get(v))
    header = ["model", "cell", "n", "baseline %", "current %", "Δ pp", "p (one-sided)", "test", "verdict"]
    rows = [[r.model, f"{r.dataset} · {r.cell}", str(r.n), _pp(r.baseline), _pp(r.current),
             "" if pd.isna(r.delta_pp) else f"{r.delta_pp:+.2f}", fmt_p(r.p), r.test,
             f"**{r.verdict.upper()}**" if r.verdict in ("regression", "missing") else r.verdict]
            for r in df.itertuples()]
    text = (f"## robench check: {status}\n\n{len(df)} baseline metrics: {parts}.\n\n"
            + markdown_table(header, rows, right={2, 3, 4, 5, 6}) + "\n\n"
            f"A metric regresses when it drops by more than {tol:g} pp AND the drop is significant at "
            f"alpha = {alpha:g} (one-sided exact McNemar on shared samples when both sides have per-sample outcomes, "
            f"else a one-sided two-proportion z test on n).")
    if df.attrs.get("new_cells"):
        text += f" {df.attrs['new_cells']} current cells have no baseline and were not compared."
    if code == 2:
        text += " Missing cells fail the check; pass --allow-missing to accept them."
    return text + "\n"
