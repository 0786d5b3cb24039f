"""The eval table of `robench eval` / `robench sweep`: a compact per-model summary of a tidy results table."""

from __future__ import annotations

import pandas as pd

from robench.labels import fmt_eps, weights_tags


def summarize(results) -> pd.DataFrame:
    """Compact per-model summary of a tidy results table: clean, mean corruption accuracy over the benchmark
    corruptions (and, apart, over the extra ones), each attack x eps."""
    rows = []
    keys = ["model", "checkpoint_sha256"] if "checkpoint_sha256" in results else ["model"]
    tags = {}
    if len(keys) > 1:
        for _, g in results.groupby("model", sort=False):
            tags.update(weights_tags(g["checkpoint_sha256"]))
    for key, df in results.groupby(keys, sort=False):
        model = key[0] if isinstance(key, tuple) else key
        sha = df["checkpoint_sha256"].iloc[0] if len(keys) > 1 else None
        weights = "" if sha is None else "RANDOM-INIT" if str(sha).startswith("random-init") else tags.get(sha, "")
        info = dict(model=model, weights=weights,
                    evaluated=str(df["evaluated"].iloc[0]) if "evaluated" in df else "",
                    skipped=int(df["skipped"].max()) if "skipped" in df else 0)
        for r in df[df.threat == "clean"].itertuples():
            rows.append(dict(info, threat="clean", n=r.n, value=r.value, ci_low=r.ci_low, ci_high=r.ci_high))
        cor = df[df.threat == "corruption"]
        extra = cor["category"].eq("extra") if "category" in cor else pd.Series(False, index=cor.index)
        for part, what in ((cor[~extra], "corruptions"), (cor[extra], "extra corruptions")):
            if len(part):
                rows.append(dict(info, threat=f"{what} (mean of {len(part)} cells)", n=int(part.n.min()),
                                 value=part.value.mean(), ci_low=None, ci_high=None))
        for r in df[df.threat == "attack"].itertuples():
            tag = " [paper protocol]" if r.protocol == "paper" else ""
            rows.append(dict(info, threat=f"{r.attack} {r.norm} eps={fmt_eps(r.eps, r.norm)}{tag}", n=r.n,
                             value=r.value, ci_low=r.ci_low, ci_high=r.ci_high))
    return pd.DataFrame(rows)


def summary_notes(summary) -> list[str]:
    """Lines under the eval table: random weights, unreadable images skipped."""
    notes = []
    if summary.empty:
        return notes
    for model, g in summary.groupby("model", sort=False):
        if (g["weights"] == "RANDOM-INIT").any():
            notes.append(f"warning: {model} has RANDOM weights (--random-init): flagged random-init in every table")
        if g["skipped"].max() > 0:
            notes.append(f"warning: {model}: {int(g['skipped'].max())} unreadable image(s) skipped (not in n)")
    return notes
