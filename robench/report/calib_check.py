"""`robench check --calibration ece|rms_calib`: the CI gate on calibration errors (lower is better).

A cell's calibration REGRESSES when both hold:
    current - baseline > tolerance (percentage points), and
    the increase is significant at alpha by a bootstrap (one-sided p = share of bootstrap replicates whose increase
    is <= 0): paired over the samples both sides share when the baseline is a store with per-sample confidences,
    else the current cell's samples resampled against the baseline CSV's value (column `ece` / `rms_calib`).
Replicates come from a fixed seed (the verdict is reproducible). Cells without recorded confidences on either side
are not compared; a baseline with no comparable cell is an error (exit 2).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from robench.errors import RobenchError
from robench.report import calibration as cal
from robench.report.check import load_table
from robench.report.results import cell_label, index_rows, normalize
from robench.run.store import Store

CALIB_METRICS = ("ece", "rms_calib")


def ece_replicates(conf, correct, idx: np.ndarray) -> np.ndarray:
    """ECE of each bootstrap replicate idx[b] (sample positions, shape (B, n)): per bin |sum correct - sum conf| / n,
    summed (the same value as cal.ece on conf[idx[b]], computed for all replicates at once)."""
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    B, n = idx.shape
    k = cal.N_BINS + 1
    key = (np.arange(B)[:, None] * k + cal.bin_index(conf)[idx]).ravel()
    sc = np.bincount(key, weights=conf[idx].ravel(), minlength=B * k)
    sa = np.bincount(key, weights=correct[idx].ravel(), minlength=B * k)
    return np.abs(sa - sc).reshape(B, k).sum(1) / n


def replicates(metric: str, conf, correct, idx: np.ndarray) -> np.ndarray:
    if metric == "ece":
        return ece_replicates(conf, correct, idx)
    conf, correct = np.asarray(conf, float), np.asarray(correct, float)
    return np.array([cal.rms_calib(conf[i], correct[i]) for i in idx])


def bootstrap_p(metric: str, cur: pd.DataFrame, base: pd.DataFrame | None, base_value: float, n_boot: int,
                seed: int) -> tuple[float, float, float, int]:
    """(current value, baseline value, one-sided p of 'current > baseline', n compared)."""
    rng = np.random.default_rng(seed)
    fn = getattr(cal, metric)
    if base is not None:  # paired: the samples both sides share
        both = cur.merge(base, on="sample", suffixes=("", "_b"))
        n = len(both)
        idx = rng.integers(0, n, size=(n_boot, n))
        d = (replicates(metric, both["confidence"], both["correct"], idx)
             - replicates(metric, both["confidence_b"], both["correct_b"], idx))
        c, b = fn(both["confidence"], both["correct"]), fn(both["confidence_b"], both["correct_b"])
    else:
        n = len(cur)
        idx = rng.integers(0, n, size=(n_boot, n))
        c, b = fn(cur["confidence"], cur["correct"]), base_value
        d = replicates(metric, cur["confidence"], cur["correct"], idx) - b
    return c, b, float((np.sum(d <= 0) + 1) / (n_boot + 1)), n


def check_calibration(baseline, store="results", metric: str = "ece", tolerance: float = 1.0, alpha: float = 0.05,
                      n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """Rows (model, dataset, cell, n, baseline, current, delta_pp, p, verdict) and the exit code (0 / 1)."""
    if metric not in CALIB_METRICS:
        raise RobenchError(f"unknown calibration metric '{metric}' ({', '.join(CALIB_METRICS)})")
    if not (0 < alpha < 1) or not (math.isfinite(tolerance) and tolerance >= 0):
        raise RobenchError("--alpha must be in (0, 1) and --tolerance a finite number >= 0")
    base, base_outcomes = load_table(baseline)
    base_store = Store(baseline, readonly=True) if base_outcomes is not None else None
    if base_store is None and metric not in base.columns:
        raise RobenchError(f"baseline {baseline} has no '{metric}' column: give a results directory (per-sample "
                           f"confidences) or a CSV with the column")
    cur_store = store if isinstance(store, Store) else Store(store, readonly=True)
    cur_rows = index_rows(normalize(cur_store.results()))
    cur_conf = cal.confidences(cur_store)
    base_conf = cal.confidences(base_store) if base_store is not None else None
    rows = []
    for k, rb in index_rows(base).items():
        rc = cur_rows.get(k)
        if rc is None:
            continue
        cur = cur_conf[cur_conf["cell_id"] == int(rc["cell_id"])]
        b = base_conf[base_conf["cell_id"] == int(rb["cell_id"])] if base_conf is not None else None
        bval = None if b is not None else rb.get(metric)
        if cur.empty or (b is not None and b.empty) or (b is None and (bval is None or pd.isna(bval))):
            continue
        c, bv, p, n = bootstrap_p(metric, cur, b, float(bval) if bval is not None else math.nan, n_boot, seed)
        delta = 100 * (c - bv)
        verdict = ("regression" if p < alpha else "increase, not significant") if delta > tolerance else (
            "improved" if delta < -tolerance else "ok")
        rows.append({"model": rb["model"], "dataset": rb["dataset"], "cell": cell_label(rb), "n": n,
                     "baseline": bv, "current": c, "delta_pp": delta, "p": p, "verdict": verdict})
    if not rows:
        raise RobenchError(f"no cell of baseline {baseline} has recorded confidences on both sides to compare "
                           f"{metric} (stores written before confidences were recorded have none)")
    df = pd.DataFrame(rows)
    code = int((df["verdict"] == "regression").any())
    df.attrs.update(metric=metric, tolerance=tolerance, alpha=alpha, exit_code=code, baseline=str(Path(baseline)))
    return df, code


def format_calibration_check(df: pd.DataFrame) -> str:
    from robench.report.leaderboard import markdown_table

    a = df.attrs
    status = "FAIL: calibration regressed" if a.get("exit_code") else "PASS"
    header = ["model", "cell", "n", f"baseline {a['metric']} %", f"current {a['metric']} %", "Δ pp", "p", "verdict"]
    rows = [[r.model, f"{r.dataset} · {r.cell}", str(r.n), f"{100 * r.baseline:.2f}", f"{100 * r.current:.2f}",
             f"{r.delta_pp:+.2f}", f"{r.p:.3g}", f"**{r.verdict.upper()}**" if r.verdict == "regression"
             else r.verdict] for r in df.itertuples()]
    return (f"## robench check --calibration {a['metric']}: {status}\n\n" + markdown_table(header, rows) + "\n\n"
            f"A cell regresses when its {a['metric']} rises by more than {a['tolerance']:g} pp AND the rise is "
            f"significant at alpha = {a['alpha']:g} (one-sided bootstrap, paired on shared samples when the "
            "baseline is a store).\n")
