"""Robustness curves from minimum-norm attacks (robench.attack.fmn): robust accuracy at any eps read off the
per-sample eps* (robench.run.eps_star), with Wilson intervals; the median eps*; a paired comparison of two models.

eps* of a sample is the norm of the smallest adversarial found (0: the clean input is misclassified; inf: none
found within the budget). A sample is robust at eps iff eps* > eps, so one run gives the whole curve. Fixed-eps
attacks of the same norm on the same model and data in the same stores tighten it: a sample that such an attack
broke at eps has eps* <= eps (`tightened` counts them). Robust accuracy is over every sample (a clean-misclassified
one is never robust), the median eps* over clean-correct samples (inf when fewer than half were broken).

Paired comparison: the Wilcoxon signed-rank test on the per-sample differences of eps* over the samples both models
classify correctly. It is rank based, so samples with no adversarial found (eps* = inf) take part as "larger than
every found one" without inventing a value (a bootstrap of the median difference cannot handle inf, and needs
random draws); it uses the pairing (same image, both models), which the two curves' intervals ignore.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robench.intervals import wilson
from robench.labels import fmt_eps
from robench.report.results import distinguish_evaluations
from robench.run.eps_star import read_eps_star
from robench.run.store import Store

PROBE = "probe-large-eps"  # robench.run.resolve.PROBE (the report does not import the run planner)
KEY = ["model", "checkpoint_sha256", "dataset", "norm"]


def standard_eps(norm: str, dataset: str = "") -> float:
    """The threat model's standard eps: L∞ 8/255 for 32×32 data, 4/255 for ImageNet-size data; L2 0.5; L1 12."""
    if norm == "Linf":
        return 4 / 255 if "imagenet" in str(dataset).lower() else 8 / 255
    return {"L2": 0.5, "L1": 12.0}.get(norm, math.nan)


def _stores(stores) -> list:
    return [stores] if isinstance(stores, (str, bytes)) or hasattr(stores, "__fspath__") else list(stores)


def eps_star_samples(stores) -> pd.DataFrame:
    """One row per (min-norm cell, sample): KEY, attack, cell_id, sample, own (the attack's eps*), eps_star (with
    the same stores' fixed-eps breaks of that norm), clean_correct; and `fixed_eps`: the store's fixed eps of that
    norm for that model (a list per row)."""
    frames = []
    for path in _stores(stores):
        st = path if isinstance(path, Store) else Store(path, readonly=True)
        try:
            res = distinguish_evaluations(st.results())  # labels as the leaderboard shows them
            att = res[(res.threat == "attack") & (res.protocol == "standard")]
            mn = att[np.isinf(att.eps.astype(float))]
            fixed = att[np.isfinite(att.eps.astype(float))]
            for _, cell in mn.iterrows():
                e = read_eps_star(st, int(cell.cell_id))
                if e.empty:
                    continue
                d = pd.DataFrame({"sample": e["sample"].to_numpy(), "own": e["eps_star"].to_numpy(float)})
                d["eps_star"] = d["own"]
                same = fixed[(fixed.model == cell.model) & (fixed.checkpoint_sha256 == cell.checkpoint_sha256)
                             & (fixed.dataset == cell.dataset) & (fixed.norm == cell.norm)]
                for _, fc in same.iterrows():  # a sample broken at eps has eps* <= eps
                    o = st.outcomes(int(fc.cell_id)).set_index("sample")["correct"]
                    broken = d["sample"].map(o).eq(0).to_numpy()
                    d["eps_star"] = np.where(broken, np.minimum(d["eps_star"], float(fc.eps)), d["eps_star"])
                for k in KEY + ["attack", "cell_id"]:
                    d[k] = cell[k]
                d["clean_correct"] = d["own"] > 0
                grid = same[same.attack != PROBE].eps.astype(float)  # the sanity probe tightens, not listed
                d["fixed_eps"] = [sorted(set(grid))] * len(d)
                frames.append(d)
        finally:
            if st is not path:
                st.close()
    cols = KEY + ["attack", "cell_id", "sample", "own", "eps_star", "clean_correct", "fixed_eps"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def median_eps_star(eps_star) -> float:
    """Median eps* over clean-correct samples (eps* > 0); inf when fewer than half were broken; nan if none."""
    e = np.asarray(eps_star, dtype=float)
    e = e[e > 0]
    return float(np.median(e)) if len(e) else math.nan


def curve_points(eps_star, eps_list) -> list[dict]:
    """Robust accuracy at each eps (eps* > eps), its Wilson interval, over every sample given."""
    e = np.asarray(eps_star, dtype=float)
    out = []
    for eps in eps_list:
        k, n = int((e > eps).sum()), len(e)
        lo, hi = wilson(k, n)
        out.append({"eps": float(eps), "n": n, "robust": k, "robust_acc": k / n if n else math.nan,
                    "ci_low": lo, "ci_high": hi})
    return out


def default_eps(norm: str, dataset: str, fixed) -> list[float]:
    """The standard eps of the threat model and every fixed eps of that norm in the store."""
    return sorted({standard_eps(norm, dataset), *map(float, fixed)})


def curves(stores, eps=None) -> pd.DataFrame:
    """The curve of every min-norm cell: one row per (model, attack, eps) with robust_acc, its interval, n, the
    median eps*, the count of clean-correct samples with no adversarial found and of fixed-eps tightenings."""
    s = eps_star_samples(stores)
    rows = []
    for (cid, attack), g in s.groupby(["cell_id", "attack"], sort=False):
        head = g.iloc[0]
        grid = list(eps) if eps is not None else default_eps(head.norm, head.dataset, head.fixed_eps)
        common = {k: head[k] for k in KEY} | {
            "attack": attack, "median_eps_star": median_eps_star(g.eps_star),
            "not_found": int((np.isinf(g.eps_star) & g.clean_correct).sum()),
            "tightened": int((g.eps_star < g.own).sum())}
        rows += [{**common, **p} for p in curve_points(g.eps_star, grid)]
    return pd.DataFrame(rows)


def paired_comparison(samples: pd.DataFrame, model_a: str, model_b: str, attack: str | None = None) -> dict:
    """Wilcoxon signed-rank test of eps*(a) − eps*(b) over the samples both classify correctly (inf ranked above
    every finite value; pairs with both inf are ties, dropped as zero differences are)."""
    from scipy.stats import wilcoxon

    s = samples if attack is None else samples[samples.attack == attack]
    a = s[s.model == model_a].set_index("sample")["eps_star"]
    b = s[s.model == model_b].set_index("sample")["eps_star"]
    both = a.index.intersection(b.index)
    a, b = a[both].to_numpy(float), b[both].to_numpy(float)
    keep = (a > 0) & (b > 0)
    a, b = a[keep], b[keep]
    fin = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)], [0.0]])
    big = 2 * fin.max() + 1  # inf: above every finite eps* (the test only uses ranks of |differences|)
    d = np.where(np.isinf(a), big, a) - np.where(np.isinf(b), big, b)
    d[np.isinf(a) & np.isinf(b)] = 0
    out = {"model_a": model_a, "model_b": model_b, "n": int(len(d)), "median_diff": float(np.median(d)) if len(d)
           else math.nan, "a_larger": int((d > 0).sum()), "b_larger": int((d < 0).sum()), "p_value": math.nan}
    if (d != 0).any():
        out["p_value"] = float(wilcoxon(d, zero_method="wilcox").pvalue)
    return out


def format_curves(df: pd.DataFrame) -> str:
    """A plain-text table of `curves()`."""
    if df.empty:
        return "no minimum-norm attack results (run an FMN suite, e.g. --attack fmn-linf)"
    lines = []
    for (model, attack), g in df.groupby(["model", "attack"], sort=False):
        h = g.iloc[0]
        med = h.median_eps_star
        lines.append(f"{model} · {attack} ({h.norm}, {h.dataset}): median eps* {med:.4g} ({fmt_eps(med, h.norm)}), "
                     f"no adversarial found: {h.not_found}, tightened by fixed-eps attacks: {h.tightened}")
        for _, r in g.iterrows():
            lines.append(f"  eps {fmt_eps(r.eps, r.norm):>8}  robust {r.robust_acc:7.2%}  "
                         f"[{r.ci_low:.1%}, {r.ci_high:.1%}]  ({r.robust}/{r.n})")
    return "\n".join(lines)
