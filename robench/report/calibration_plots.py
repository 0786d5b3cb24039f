"""The HTML report's calibration section: a reliability diagram per model (accuracy vs confidence in the 15
equal-width bins of the ECE), clean against the pooled benchmark corruption cells (category != "extra"), with each
side's ECE in the legend."""

from __future__ import annotations

import pandas as pd

from robench.data.formats import leaderboard_placement
from robench.report import calibration as cal


def pooled(res) -> dict[str, dict[str, pd.DataFrame]]:
    """{model: {"clean": confidences, "corruptions": confidences}} over the main datasets' cells (companion sets
    and ImageNet-O left out) of a Results; models without recorded confidences are absent."""
    t = res.table
    out: dict[str, dict[str, list]] = {}
    for i, s in enumerate(getattr(res, "stores", [])):
        conf = cal.confidences(s)
        if conf.empty:
            continue
        mine = t[(t["store"] == i) & t["cell_id"].isin(conf["cell_id"])]
        mine = mine[[leaderboard_placement(d)[1] is None for d in mine["dataset"]]]
        for r in mine.itertuples():
            side = "clean" if r.threat == "clean" else (
                "corruptions" if r.threat == "corruption" and r.category != "extra" else None)
            if side:
                out.setdefault(r.model, {}).setdefault(side, []).append(conf[conf["cell_id"] == r.cell_id])
    return {m: {k: pd.concat(v, ignore_index=True) for k, v in d.items()} for m, d in out.items()}


def reliability_plot(data: dict[str, dict[str, pd.DataFrame]]) -> bytes | None:
    if not data:
        return None
    from robench.report.plots import _plt, _png

    plt = _plt()
    models = list(data)
    cols = min(len(models), 4)
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, m in zip(axes.ravel(), models):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for side, color in (("clean", "tab:blue"), ("corruptions", "tab:red")):
            d = data[m].get(side)
            if d is None or d.empty:
                continue
            r = cal.reliability(d["confidence"], d["correct"])
            r = r[r["n"] > 0]
            e = cal.ece(d["confidence"], d["correct"])
            ax.plot(r["confidence"], r["accuracy"], marker="o", ms=3, color=color,
                    label=f"{'clean' if side == 'clean' else 'corruptions'} (ECE {100 * e:.1f}%)")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=m)
        ax.legend(loc="upper left", frameon=False)
    for ax in axes.ravel()[len(models):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def calibration_section(doc, res) -> None:
    data = pooled(res)
    if not data:
        return
    doc.h(2, "Calibration")
    doc.figure("reliability", reliability_plot(data),
               "Reliability diagrams: accuracy against confidence (softmax probability of the prediction) in 15 "
               "equal-width bins, clean vs all benchmark corruption cells pooled; the dashed diagonal is perfect "
               "calibration. ECE = sample-weighted mean gap between the curve and the diagonal.")
    rows = [[m, *(f"{100 * cal.ece(d[s]['confidence'], d[s]['correct']):.2f}" if s in d else "" for s in
                  ("clean", "corruptions")),
             *(f"{100 * cal.rms_calib(d[s]['confidence'], d[s]['correct']):.2f}" if s in d else "" for s in
               ("clean", "corruptions")),
             *(f"{100 * cal.aurra(d[s]['confidence'], d[s]['correct']):.2f}" if s in d else "" for s in
               ("clean", "corruptions"))] for m, d in data.items()]
    doc.table(["model", "clean ECE %", "corruptions ECE % (pooled)", "clean RMS %", "corruptions RMS % (pooled)",
               "clean AURRA %", "corruptions AURRA % (pooled)"], rows, right=[1, 2, 3, 4, 5, 6])
    doc.note("Pooled over the corruption cells here; the leaderboard's corruptions_ece is the mean over "
             "corruptions of each one's mean over severities.")
