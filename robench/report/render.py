"""`robench report`: one self-contained HTML page (inline CSS, figures embedded as base64 PNG, no network) and its
markdown twin (report.md with the PNGs written next to it), built from the same list of blocks.

Sections: leaderboard (Wilson intervals, flags); robust accuracy vs ε; accuracy vs severity and the CE heatmap;
paired comparison against a baseline model; sanity flags; attention diagnostics; provenance. A section without data
is replaced by a one-line note.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
from pathlib import Path

import pandas as pd

from robench._version import __version__
from robench.errors import RobenchError
from robench.paths import make_dir, write_file, write_text
from robench.report.curve_section import curves_section
from robench.report import plots
from robench.report.calibration_plots import calibration_section
from robench.report.compare import _pp, compare_tables, fmt_p
from robench.report.leaderboard import display_table, leaderboard, markdown_table
from robench.report.results import (_DEFAULT, Results, cell_label, corruption_rank, corruption_summaries,
                                    normalize)


class Doc:
    """An ordered list of blocks rendered to both HTML and markdown."""

    def __init__(self):
        self.blocks: list[tuple] = []
        self.figures: list[str] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def note(self, text: str):
        self.blocks.append(("note", text))

    def table(self, header: list[str], rows: list[list[str]], right=None):
        self.blocks.append(("table", header, rows, set(right or [])))

    def details(self, summary: str | None):
        """Start (summary text) or end (None) a collapsible block."""
        self.blocks.append(("details", summary))

    def figure(self, name: str, png: bytes | None, caption: str) -> bool:
        if png is None:
            return False
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        self.blocks.append(("fig", name, png, caption))
        self.figures.append(name)
        return True

    def html(self, title: str) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                anchor = html.escape(b[2].lower().replace(" ", "-"))
                out.append(f'<h{b[1]} id="{anchor}">{html.escape(b[2])}</h{b[1]}>')
            elif kind == "p":
                out.append(f"<p>{html.escape(b[1])}</p>")
            elif kind == "note":
                out.append(f'<p class="note">{html.escape(b[1])}</p>')
            elif kind == "table":
                _, header, rows, right = b
                th = "".join(f'<th{" class=r" if i in right else ""}>{html.escape(h)}</th>'
                             for i, h in enumerate(header))
                body = "".join("<tr>" + "".join(
                    f'<td{" class=r" if i in right else ""}>{html.escape(str(x))}</td>' for i, x in enumerate(r))
                    + "</tr>" for r in rows)
                out.append(f'<div class="tw"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>')
            elif kind == "details":
                out.append(f"<details><summary>{html.escape(b[1])}</summary>" if b[1] else "</details>")
            elif kind == "fig":
                _, name, png, caption = b
                data = base64.b64encode(png).decode()
                out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return HTML.format(title=html.escape(title), css=CSS, body="\n".join(out))

    def markdown(self, out_dir: Path) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append("#" * b[1] + " " + b[2])
            elif kind == "p":
                out.append(b[1])
            elif kind == "note":
                out.append(f"*{b[1]}*")
            elif kind == "table":
                _, header, rows, right = b
                out.append(markdown_table(header, rows, right=right))
            elif kind == "details":
                out.append(f"<details><summary>{b[1]}</summary>" if b[1] else "</details>")
            elif kind == "fig":
                _, name, png, caption = b
                (out_dir / f"{name}.png").write_bytes(png)
                out.append(f"![{caption}]({name}.png)\n\n*{caption}*")
        return "\n\n".join(out) + "\n"


CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;
 max-width:1240px;margin:0 auto;padding:24px 32px 64px;line-height:1.45;background:#fff}
h1{font-size:28px;margin:0 0 4px}
h2{font-size:21px;margin:36px 0 10px;padding-bottom:6px;border-bottom:1px solid #d8dee4}
h3{font-size:16px;margin:22px 0 8px}p{margin:6px 0 10px}p.note{color:#59636e;font-style:italic}
.tw{overflow-x:auto;margin:8px 0 14px}table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d8dee4;padding:4px 8px;white-space:nowrap;text-align:left}th{background:#f6f8fa;font-weight:600}
td.r,th.r{text-align:right}tbody tr:nth-child(even){background:#fafbfc}
figure{margin:12px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #eef0f2}
figcaption{color:#59636e;font-size:13px;margin-top:4px}
details{margin:8px 0 14px}summary{cursor:pointer;color:#0969da}
"""
HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body>
{body}
</body></html>
"""


def _corruptions(table: pd.DataFrame, dataset: str) -> list[str]:
    cor = table[(table["threat"] == "corruption") & (table["dataset"] == dataset)]
    cats = dict(zip(cor["corruption"], cor["category"]))
    return sorted(cats, key=lambda c: corruption_rank(c, cats[c]))


def _flag_cells(res: Results, store: int, cells_json) -> str:
    try:
        ids = json.loads(cells_json or "[]")
    except (TypeError, ValueError):
        return str(cells_json or "")
    cells = normalize(res.stores[int(store)].cells()).set_index("cell_id")
    out = []
    for c in ids:
        if isinstance(c, int) and c in cells.index:
            out.append(cell_label(cells.loc[c]))
        else:
            out.append(str(c))
    return "; ".join(out)


def _time(t) -> str:
    if t is None or pd.isna(t):
        return ""
    return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def report(stores, out_dir, baseline: str | None = None, alexnet=_DEFAULT, title: str = "robench report") -> Path:
    """Write out_dir/report.html (self-contained) and out_dir/report.md (+ PNGs) for one or more stores.

    baseline: a model label; adds the paired comparison of every other model against it. Returns the HTML path.
    """
    res = stores if isinstance(stores, Results) else Results(stores)
    table = res.table
    if table.empty:
        raise RobenchError("no finished cells in the results: nothing to report")
    if baseline is not None:
        baseline = res.check_models([baseline])[0]
    out_dir = Path(out_dir)
    models = res.model_labels
    colors = plots.model_colors(models)
    datasets = list(dict.fromkeys(table["dataset"]))
    multi = len(datasets) > 1
    doc = Doc()

    doc.h(1, title)
    paths = ", ".join(str(s.path.parent) for s in res.stores)
    doc.p(f"{len(models)} models, {len(table)} evaluated cells on {', '.join(datasets)}; results from {paths}. "
          f"Generated {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by robench "
          f"{__version__}.")

    lb, cat_cols = _leaderboard_section(doc, res, alexnet, multi)
    _adversarial_section(doc, table, colors, datasets, multi)
    curves_section(doc, res, colors, datasets, multi, baseline)  # minimum-norm attacks (robench.report.curve_section)
    _corruptions_section(doc, res, lb, cat_cols, colors, datasets, alexnet)
    calibration_section(doc, res)  # issue 24: reliability diagrams (robench.report.calibration_plots)
    _comparison_section(doc, res, baseline, colors)
    _flags_section(doc, res)
    _diagnostics_section(doc, res, colors, multi)
    _provenance_section(doc, res)

    html = doc.html(title)
    make_dir(out_dir, "report directory")
    html_path = write_text(out_dir / "report.html", html, "report")
    write_file(out_dir / "report.md", lambda p: p.write_text(doc.markdown(out_dir), encoding="utf-8"), "report")
    return html_path


def _leaderboard_section(doc: Doc, res: Results, alexnet, multi: bool):
    """The leaderboard table and its notes; returns it and its per-category corruption columns."""
    doc.h(2, "Leaderboard")
    lb = leaderboard(res, ci=True, alexnet=alexnet)
    cat_cols = [c for c in lb.columns if c.startswith("corruptions_") and c.endswith("_acc") and c != "corruptions_acc"
                or c.startswith("extra_corruptions_acc")]
    header, rows = display_table(lb.drop(columns=cat_cols + ([] if multi else ["dataset"])))
    doc.table(header, rows, right=[i for i, h in enumerate(header) if h not in ("model", "variant", "arch", "dataset")])
    rej = (" rejected_hits = verdicts 'misclassified' of a bf16/fp16 forward that an fp32 forward rejected "
           "(they did not count)." if "rejected_hits" in lb.columns else "")
    if any("mce" in c for c in lb.columns):
        doc.note("Accuracies, mCE and relative mCE in %, with Wilson 95% intervals for single cells; empty = not "
                 "evaluated. mCE is AlexNet-normalised (ImageNet-C); flags = sanity and random-init flags raised "
                 "for the model." + rej)
    else:
        doc.note("Accuracies in %, with Wilson 95% intervals for single cells; empty = not evaluated (mCE needs "
                 "ImageNet-C's AlexNet errors: ImageNet data only); flags = sanity and random-init flags raised "
                 "for the model." + rej)
    for n in lb.attrs.get("notes", []):
        doc.note(n)
    return lb, cat_cols


def _adversarial_section(doc: Doc, table: pd.DataFrame, colors, datasets, multi: bool) -> None:
    doc.h(2, "Adversarial robustness")
    shown = False
    for d in datasets:
        on = f" on {d}" if multi else ""
        shown |= doc.figure(f"robust-vs-eps-{d}", plots.robust_vs_eps(table, colors, d),
                            f"Robust accuracy vs ε{on}: one panel per attack and norm, one line per model; ε = 0 is "
                            "clean accuracy; shading = Wilson 95% interval.")
    if not shown:
        doc.note("No attack cells in these results.")


def _corruptions_section(doc: Doc, res: Results, lb: pd.DataFrame, cat_cols, colors, datasets, alexnet) -> None:
    """Accuracy vs severity, the CE (or mean error) heatmap per dataset, and the per-category table."""
    table, models, multi = res.table, res.model_labels, len(datasets) > 1
    doc.h(2, "Corruptions")
    summaries = corruption_summaries(table, alexnet)
    shown = False
    for d in datasets:
        if not doc.figure(f"acc-vs-severity-{d}", plots.acc_vs_severity(table, colors, d),
                          f"Accuracy vs corruption severity{' on ' + d if multi else ''} (severity 0 = clean), one "
                          "panel per corruption."):
            continue
        shown = True
        ce = {m: s.ce for (m, dd, p), s in summaries.items() if dd == d and p == "standard"}
        if any(ce.values()):
            values = pd.DataFrame({m: {c: 100 * v for c, v in row.items()} for m, row in ce.items()}).T
            values = values.reindex(columns=[c for c in _corruptions(table, d) if c in values])
            doc.figure(f"ce-heatmap-{d}", plots.heatmap(values, f"Corruption error CE{' on ' + d if multi else ''}",
                                                        "CE (%, AlexNet = 100)", center=100.0),
                       "Corruption error per model and corruption: sum of errors over the 5 severities relative to "
                       "AlexNet's (ImageNet-C normalisation; lower is better). Corruptions without all 5 severities "
                       "are blank.")
        else:
            cor = table[(table["threat"] == "corruption") & (table["dataset"] == d) & (table["protocol"] == "standard")]
            err = (100 * (1 - cor.groupby(["model", "corruption"], sort=False)["value"].mean())).unstack()
            err = err.reindex(index=[m for m in models if m in err.index],
                              columns=_corruptions(table, d))
            title = f"Mean error per corruption{' on ' + d if multi else ''}"
            doc.figure(f"error-heatmap-{d}", plots.heatmap(err, title, "error (%, mean over severities)"),
                       "Top-1 error per model and corruption, averaged over the severities present (CE needs all 5 "
                       "severities and an AlexNet figure, which these cells lack; lower is better).")
    if not shown:
        doc.note("No corruption cells in these results.")
    elif cat_cols:
        cats = lb[["model"] + (["dataset"] if multi else []) + cat_cols].dropna(how="all", subset=cat_cols)
        header, rows = display_table(cats)
        doc.table([_category_header(h, h in cat_cols) for h in header], rows, right=range(1 + multi, len(header)))
        doc.note("Mean accuracy per corruption category (each corruption averaged over its severities first), over "
                 "the benchmark corruptions; 'extra corruptions' (the suite's extras, e.g. speckle_noise, "
                 "gaussian_blur, spatter, saturate) are shown apart and enter neither the corruption mean nor mCE.")


def _category_header(col: str, metric: bool) -> str:
    if col.startswith("extra_corruptions_acc"):
        return "extra corruptions (not in mean/mCE) %" + col[len("extra_corruptions_acc"):]
    return col.replace("corruptions_", "").replace("_acc", "") + (" %" if metric else "")


def _comparison_section(doc: Doc, res: Results, baseline, colors) -> None:
    doc.h(2, "Paired comparison" + (f" vs {baseline}" if baseline else ""))
    if baseline is None:
        doc.note("No baseline model chosen: pass --baseline MODEL to compare every model against it (paired, "
                 "exact McNemar tests on per-sample outcomes).")
    else:
        comp = paired_vs_baseline(res, baseline)
        if comp.empty:
            doc.note(f"No other model shares evaluated cells with {baseline}.")
        else:
            _paired_section(doc, comp, baseline, colors)


def _flags_section(doc: Doc, res: Results) -> None:
    doc.h(2, "Sanity flags")
    flags = res.flags()
    if flags.empty:
        doc.note("No sanity flags were raised.")
    else:
        doc.table(["model", "flag", "message", "cells"],
                  [[r.model, r.flag, r.message, _flag_cells(res, r.store, r.cells_json)] for r in flags.itertuples()])


def _diagnostics_section(doc: Doc, res: Results, colors, multi: bool) -> None:
    diag = res.diagnostics()
    if diag.empty:
        doc.h(2, "Attention diagnostics")
        doc.note("No attention diagnostics in these results (run `robench inspect` or a sweep with diagnostics).")
    else:
        doc.h(2, "Attention diagnostics")
        clean = diag[diag["corruption"].isna() & diag["attack"].isna()]
        use, what = (clean, "clean inputs") if len(clean) else (diag, "all conditions pooled")
        for d in dict.fromkeys(use["dataset"]):
            doc.figure(f"diagnostics-{d}", plots.diagnostics_plot(use[use["dataset"] == d], colors),
                       f"Attention statistics per layer ({what}{', ' + d if multi else ''}), mean over heads, one line "
                       "per model.")


def _provenance_section(doc: Doc, res: Results) -> None:
    table = res.table
    doc.h(2, "Provenance")
    runs = res.runs()
    doc.table(["store", "run", "started", "ended", "status", "robench", "torch", "timm", "python", "device", "gpu",
               "precision", "seed", "command"],
              [[str(res.stores[r.store].path.parent), str(r.run_id), _time(r.started), _time(r.ended), r.status or "",
                r.robench_version or "", r.torch_version or "", r.timm_version or "", r.python_version or "",
                r.device or "", r.gpu_name or "", r.precision or "", "" if pd.isna(r.seed) else str(int(r.seed)),
                r.command or ""] for r in runs.itertuples()])
    mods = res.models()
    doc.table(["model", "registry name", "variant", "arch", "params", "checkpoint", "sha256"],
              [[r.label, r.name, r.variant or "", r.arch or "", "" if pd.isna(r.params) else f"{int(r.params):,}",
                r.checkpoint or "(shipped/none)", (r.checkpoint_sha256 or "")[:16]] for r in mods.itertuples()],
              right={4})
    prot = table.groupby(["protocol", "adaptive"]).size()
    doc.p("Protocols: " + "; ".join(f"{p}{' adaptive' if a else ''}: {k} cells" for (p, a), k in prot.items())
          + ". Threat model: images in [0, 1], ε in pixel units, true labels; 'paper' cells follow a paper's "
            "protocol and are labelled (paper) throughout.")


def paired_vs_baseline(res: Results, baseline: str, alpha: float = 0.05) -> pd.DataFrame:
    """Every other model against `baseline` on shared cells (paired where per-sample outcomes allow)."""
    t = res.table
    ta = t[t["model"] == baseline]
    frames = []
    for m in res.model_labels:
        if m == baseline:
            continue
        df = compare_tables(ta, t[t["model"] == m], lambda r: res.outcomes(r["store"], r["cell_id"]),
                            lambda r: res.outcomes(r["store"], r["cell_id"]), alpha)
        if len(df):
            df.insert(0, "model", m)
            multi = t["dataset"].nunique() > 1
            df["label"] = [f"{d} · {c}" if multi else c for d, c in zip(df["dataset"], df["cell"])]
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _paired_rows(comp: pd.DataFrame) -> list[list[str]]:
    return [[r.model, r.label, str(r.n), _pp(r.acc_a), _pp(r.acc_b), _pp(r.diff, True),
             f"[{_pp(r.ci_low, True)}, {_pp(r.ci_high, True)}]", fmt_p(r.p),
             ("yes, better" if r.diff > 0 else "yes, worse") if r.significant else "no"] for r in comp.itertuples()]


def _paired_section(doc: Doc, comp: pd.DataFrame, baseline: str, colors: dict):
    """Summary per model, the clean and attack cells in full (table and forest plot), every cell collapsed."""
    summary = []
    for m, g in comp.groupby("model", sort=False):
        better = int((g["significant"] & (g["diff"] > 0)).sum())
        worse = int((g["significant"] & (g["diff"] < 0)).sum())

        def mean_diff(mask):
            return _pp(g.loc[mask, "diff"].mean(), True) if mask.any() else ""

        summary.append([m, str(len(g)), str(better), str(worse), str(len(g) - better - worse),
                        mean_diff(g["threat"] == "clean"), mean_diff(g["threat"] == "attack"),
                        mean_diff(g["threat"] == "corruption")])
    doc.table(["model", "shared cells", "significantly better", "significantly worse", "no significant difference",
               "Δ clean (pp)", "mean Δ attacks (pp)", "mean Δ corruptions (pp)"], summary, right=range(1, 8))
    hdr = ["model", "cell", "n", f"{baseline} %", "model %", "Δ pp", "95% CI (pp)", "p", "significant"]
    key = comp[comp["threat"] != "corruption"]
    if len(key):
        doc.table(hdr, _paired_rows(key), right={2, 3, 4, 5, 6, 7})
    forest = key if len(key) else (comp if len(comp) <= 40 else comp.iloc[:0])
    doc.figure("paired-differences", plots.difference_plot(forest, colors, baseline),
               f"Accuracy of each model minus {baseline} on shared {'clean and attack ' if len(key) else ''}cells "
               "with 95% intervals (Newcombe, paired); filled markers are significant at 0.05 (exact McNemar).")
    if len(comp) > len(key):
        doc.details(f"All {len(comp)} paired cells (corruptions included)")
        doc.table(hdr, _paired_rows(comp), right={2, 3, 4, 5, 6, 7})
        doc.details(None)
    doc.note("Δ = model − baseline; p per cell, not adjusted for multiple comparisons; unpaired two-proportion "
             "tests where the two cells share no samples.")
