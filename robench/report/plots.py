"""The report's figures (matplotlib, Agg backend), each returned as PNG bytes.

One colour per model across every figure (`model_colors`); accuracies in percent; Wilson 95% intervals shaded.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from robench.report.results import corruption_rank

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
                         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
                         "grid.alpha": 0.3, "figure.dpi": DPI})
    return plt


def model_colors(models) -> dict:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _legend_above(fig, axes, n_models: int):
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 6),
                   frameon=False, title="model")


def _eps_unit(norm) -> tuple[float, str]:
    return (255.0, f"ε ({'L∞' if norm == 'Linf' else norm}, in 1/255 pixel units)") if norm == "Linf" else \
        (1.0, f"ε ({norm or '?'} norm, pixel units in [0, 1])")


def robust_vs_eps(table: pd.DataFrame, colors: dict, dataset: str) -> bytes | None:
    """Robust accuracy vs ε: one panel per attack, norm (and protocol), one line per model; ε = 0 is clean."""
    plt = _plt()
    att = table[(table["threat"] == "attack") & (table["dataset"] == dataset)]
    att = att[att["eps"].astype(float) < math.inf]  # a min-norm cell (eps inf) has its own curve (curve_section)
    if att.empty:
        return None
    panels = list(dict.fromkeys(zip(att["attack"], att["norm"], att["protocol"], att["adaptive"])))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (attack, norm, protocol, adaptive) in zip(axes.ravel(), panels):
        scale, xlabel = _eps_unit(norm)
        sub = att[(att["attack"] == attack) & (att["norm"] == norm) & (att["protocol"] == protocol)
                  & (att["adaptive"] == adaptive)]
        for model, g in sub.groupby("model", sort=False):
            g = g.sort_values("eps")
            x = list(g["eps"] * scale)
            y, lo, hi = list(g["value"]), list(g["ci_low"]), list(g["ci_high"])
            clean = table[(table["model"] == model) & (table["dataset"] == dataset) & (table["threat"] == "clean")
                          & (table["protocol"] == protocol)]
            if len(clean):
                c = clean.iloc[-1]
                x, y, lo, hi = [0.0] + x, [c["value"]] + y, [c["ci_low"]] + lo, [c["ci_high"]] + hi
            color = colors[model]
            ax.plot(x, 100 * np.array(y), marker="o", ms=4, lw=1.6, color=color, label=model)
            ax.fill_between(x, 100 * np.array(lo), 100 * np.array(hi), color=color, alpha=0.15, lw=0)
        title = f"{attack} ({norm})" + (" adaptive" if adaptive else "") + \
            (f" [{protocol} protocol]" if protocol != "standard" else "")
        ax.set(title=title, xlabel=xlabel, ylabel="robust accuracy (%)", ylim=(0, 100))
        ax.set_xlim(left=0)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    _legend_above(fig, axes, len(colors))
    fig.tight_layout()
    return _png(fig)


def acc_vs_severity(table: pd.DataFrame, colors: dict, dataset: str) -> bytes | None:
    """Accuracy vs severity, small multiples (one panel per corruption, severity 0 = clean), one line per model."""
    plt = _plt()
    cor = table[(table["threat"] == "corruption") & (table["dataset"] == dataset) & (table["protocol"] == "standard")
                & (table["adaptive"] == 0)]
    if cor.empty:
        return None
    cats = dict(zip(cor["corruption"], cor["category"]))
    names = sorted(dict.fromkeys(cor["corruption"]), key=lambda c: corruption_rank(c, cats[c]))
    ncols = min(5, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.9 * ncols, 2.4 * nrows + 0.3), squeeze=False, sharey=True)
    for ax, name in zip(axes.ravel(), names):
        sub = cor[cor["corruption"] == name]
        for model, g in sub.groupby("model", sort=False):
            g = g.sort_values("severity", key=lambda s: s.fillna(0))
            x = [s if s is not None else 0 for s in g["severity"]]
            y = list(g["value"])
            clean = table[(table["model"] == model) & (table["dataset"] == dataset) & (table["threat"] == "clean")
                          & (table["protocol"] == "standard")]
            if len(clean):
                x, y = [0] + x, [clean["value"].iloc[-1]] + y
            ax.plot(x, 100 * np.array(y), marker="o", ms=3, lw=1.4, color=colors[model], label=model)
        cat = sub["category"].iloc[0]
        ax.set_title(f"{name}" + (f" ({cat})" if cat else ""), fontsize=10)
        ax.set_xticks(range(0, 6))
        ax.set_ylim(0, 100)
    for i, ax in enumerate(axes.ravel()):
        if i >= len(names):
            ax.set_visible(False)
            continue
        if i % ncols == 0:
            ax.set_ylabel("accuracy (%)")
        if i >= len(names) - ncols:
            ax.set_xlabel("severity (0 = clean)")
    _legend_above(fig, axes, len(colors))
    fig.tight_layout()
    return _png(fig)


def heatmap(values: pd.DataFrame, title: str, cbar_label: str, cmap: str = "RdYlGn_r", center=None) -> bytes:
    """A model x column heatmap of numbers already in display units, each cell annotated; NaN cells blank."""
    plt = _plt()
    from matplotlib.colors import TwoSlopeNorm

    data = values.to_numpy(dtype=float)
    h, w = data.shape
    fig, ax = plt.subplots(figsize=(max(5.0, 0.62 * w + 2.6), max(2.2, 0.42 * h + 1.6)))
    finite = data[np.isfinite(data)]
    norm = None
    if center is not None and finite.size:  # the reference is always the middle colour (yellow for CE = 100)
        norm = TwoSlopeNorm(vcenter=center, vmin=min(finite.min(), center - 1), vmax=max(finite.max(), center + 1))
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, aspect="auto", norm=norm)
    ax.set_xticks(range(w), [str(c).replace("_", " ") for c in values.columns], rotation=40, ha="right")
    ax.set_yticks(range(h), list(values.index))
    ax.grid(False)
    lo, hi = (norm.vmin, norm.vmax) if norm else (finite.min(), finite.max()) if finite.size else (0, 1)
    for i in range(h):
        for j in range(w):
            v = data[i, j]
            if np.isfinite(v):
                frac = (v - lo) / (hi - lo) if hi > lo else 0.5
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if frac > 0.8 or frac < 0.2 else "black")
    fig.colorbar(im, ax=ax, label=cbar_label, fraction=0.04, pad=0.02)
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def difference_plot(df: pd.DataFrame, colors: dict, baseline: str) -> bytes | None:
    """Forest plot of paired differences vs the baseline model (pp, 95% interval), one row per cell."""
    plt = _plt()
    if df.empty:
        return None
    cells = list(dict.fromkeys(df["label"]))
    models = list(dict.fromkeys(df["model"]))
    fig, ax = plt.subplots(figsize=(8.5, 0.28 * len(cells) * max(1, len(models)) ** 0.5 + 1.6))
    step = 0.7 / max(1, len(models))
    for k, m in enumerate(models):
        g = df[df["model"] == m]
        y = np.array([cells.index(c) for c in g["label"]]) + (k - (len(models) - 1) / 2) * step
        d = 100 * g["diff"].to_numpy()
        err = np.vstack([d - 100 * g["ci_low"].to_numpy(), 100 * g["ci_high"].to_numpy() - d])
        sig = g["significant"].to_numpy(dtype=bool)
        ax.errorbar(d, y, xerr=err, fmt="none", ecolor=colors.get(m, "k"), elinewidth=1.2, capsize=2)
        ax.scatter(d[sig], y[sig], color=colors.get(m, "k"), s=22, zorder=3, label=m)
        ax.scatter(d[~sig], y[~sig], facecolor="white", edgecolor=colors.get(m, "k"), s=22, zorder=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(cells)), cells)
    ax.invert_yaxis()
    ax.set_xlabel(f"accuracy difference vs {baseline} (percentage points, 95% CI)")
    ax.set_title(f"Paired differences vs {baseline} (filled = significant, McNemar)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model", frameon=False)
    fig.tight_layout()
    return _png(fig)


DIAG_STATS = ("collapse_cos", "attn_entropy_mean", "attn_max_mean", "top_key_share", "k_norm_max_over_mean",
              "q_norm_max_over_mean", "m_mean")
DIAG_LABELS = {"collapse_cos": "token collapse (mean pairwise cosine)", "attn_entropy_mean": "attention entropy (nats)",
               "attn_max_mean": "max attention weight", "top_key_share": "share of top key",
               "k_norm_max_over_mean": "key norm max / mean", "q_norm_max_over_mean": "query norm max / mean",
               "m_mean": "elliptical m (mean)"}


def diagnostics_plot(diag: pd.DataFrame, colors: dict) -> bytes | None:
    """Per-layer attention statistics (mean over heads), one panel per statistic, one line per model."""
    plt = _plt()
    stats = [s for s in DIAG_STATS if s in set(diag["stat"])]
    if not stats:
        stats = list(dict.fromkeys(diag["stat"]))[:6]
    if not stats:
        return None
    ncols = min(3, len(stats))
    nrows = math.ceil(len(stats) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.2 * nrows), squeeze=False)
    for ax, stat in zip(axes.ravel(), stats):
        sub = diag[diag["stat"] == stat]
        per = sub.groupby(["model", "layer"], sort=False)["value"].mean().reset_index()
        for model, g in per.groupby("model", sort=False):
            ax.plot(g["layer"], g["value"], marker="o", ms=3.5, lw=1.5, color=colors.get(model, "k"), label=model)
        ax.set(title=stat, xlabel="layer (block index)", ylabel=DIAG_LABELS.get(stat, stat))
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in axes.ravel()[len(stats):]:
        ax.set_visible(False)
    _legend_above(fig, axes, len(colors))
    fig.tight_layout()
    return _png(fig)


__all__ = ["model_colors", "robust_vs_eps", "acc_vs_severity", "heatmap", "difference_plot", "diagnostics_plot"]
