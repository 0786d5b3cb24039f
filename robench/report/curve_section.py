"""The report's "Robustness curves (minimum-norm attacks)" section: accuracy vs eps read off each model's eps*
(robench.report.curves) with Wilson 95% bands, the fixed-eps attacks of the same norm as markers (a minimum-norm
attack can be weaker than AutoAttack at a given eps: both are shown where both ran; the curve includes their
breaks), the median eps* per model, and paired Wilcoxon signed-rank comparisons of models' eps*."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robench.labels import fmt_eps
from robench.report import plots
from robench.report.curves import curve_points, eps_star_samples, median_eps_star, paired_comparison


def curve_plot(samples: pd.DataFrame, table: pd.DataFrame, colors: dict, dataset: str) -> bytes | None:
    """One panel per min-norm attack (and norm), one step curve per model with its Wilson band; fixed-eps attack
    cells of that norm as markers."""
    s = samples[samples.dataset == dataset]
    if s.empty:
        return None
    plt = plots._plt()
    panels = list(dict.fromkeys(zip(s.attack, s.norm)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (attack, norm) in zip(axes.ravel(), panels):
        scale, xlabel = plots._eps_unit(norm)
        sub = s[(s.attack == attack) & (s.norm == norm)]
        fin = sub.eps_star[np.isfinite(sub.eps_star) & (sub.eps_star > 0)]
        top = float(fin.quantile(0.98)) * 1.2 if len(fin) else 1.0
        grid = np.linspace(0, top, 121)
        for model, g in sub.groupby("model", sort=False):
            pts = pd.DataFrame(curve_points(g.eps_star, grid))
            c = colors.get(model)
            ax.step(grid * scale, 100 * pts.robust_acc, where="post", color=c, lw=1.6, label=model)
            ax.fill_between(grid * scale, 100 * pts.ci_low, 100 * pts.ci_high, step="post", color=c, alpha=0.15, lw=0)
            fx = table[(table.model == model) & (table.dataset == dataset) & (table.threat == "attack")
                       & (table.norm == norm) & (table.protocol == "standard")]
            fx = fx[np.isfinite(fx.eps.astype(float)) & (fx.eps.astype(float) <= top)]
            ax.scatter(fx.eps.astype(float) * scale, 100 * fx.value, color=c, marker="x", s=28, zorder=3)
        ax.set(title=f"{attack} ({norm}) curve; × = fixed-eps attacks", xlabel=xlabel,
               ylabel="robust accuracy (%)", ylim=(0, 100))
        ax.set_xlim(left=0)
    plots._legend_above(fig, axes, len(colors))
    fig.tight_layout()
    return plots._png(fig)


def curves_section(doc, res, colors, datasets, multi: bool, baseline: str | None = None) -> None:
    """Append the section to `doc` (nothing when the stores hold no minimum-norm results)."""
    if not res.stores:
        return
    samples = eps_star_samples(res.stores)
    if samples.empty:
        return
    doc.h(2, "Robustness curves (minimum-norm attacks)")
    for d in datasets:
        on = f" on {d}" if multi else ""
        doc.figure(f"curves-{d}", curve_plot(samples, res.table, colors, d),
                   f"Robust accuracy vs ε{on} from each sample's ε* (one FMN run per model; a sample is robust at ε "
                   "iff ε* > ε), with Wilson 95% bands; × = fixed-ε attacks of the same norm (their breaks are "
                   "folded into the curve). A minimum-norm attack can be weaker than AutoAttack at a given ε.")
    rows = []
    for (model, attack, norm), g in samples.groupby(["model", "attack", "norm"], sort=False):
        med = median_eps_star(g.eps_star)
        nf = int((np.isinf(g.eps_star) & g.clean_correct).sum())
        rows.append([model, attack, str(len(g)), "" if math.isnan(med) else f"{med:.4g} ({fmt_eps(med, norm)})",
                     str(nf), str(int((g.eps_star < g.own).sum()))])
    doc.table(["model", "attack", "n", "median ε*", "no adversarial found", "tightened by fixed ε"], rows,
              right={2, 3, 4, 5})
    _paired_table(doc, samples, baseline)


def _paired_table(doc, samples: pd.DataFrame, baseline: str | None) -> None:
    models = list(dict.fromkeys(samples.model))
    if len(models) < 2:
        return
    ref = baseline if baseline in models else models[0]
    rows = []
    for attack in dict.fromkeys(samples.attack):
        for m in models:
            if m == ref:
                continue
            r = paired_comparison(samples, m, ref, attack)
            p = "" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}"
            rows.append([attack, f"{m} vs {ref}", str(r["n"]), f"{r['median_diff']:+.4g}", str(r["a_larger"]),
                         str(r["b_larger"]), p])
    doc.table(["attack", "pair (A vs B)", "n", "median ε*(A) − ε*(B)", "A larger", "B larger", "Wilcoxon p"], rows,
              right={2, 3, 4, 5, 6})
    doc.note("Paired comparison of ε* on the samples both models classify correctly: Wilcoxon signed-rank test "
             "(rank based: samples with no adversarial found enter as larger than every found ε*, no value "
             "invented; deterministic, no resampling).")
