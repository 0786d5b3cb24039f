"""The leaderboard: one row per model (and dataset), RobustBench-like column names, written as csv/md/json/latex.

Columns (accuracies and mCE as fractions in the DataFrame, csv and json; percent in md and latex):
    model, variant, arch, params, dataset, clean_acc,
    corruptions_acc (mean over the benchmark corruptions of each one's mean accuracy over severities; the suite's
    extras, category "extra" such as speckle_noise, never enter it, its categories or mCE),
    corruptions_mce, corruptions_rel_mce (ImageNet-C, AlexNet-normalised; empty unless every corruption has all 5
    severities), corruptions_<category>_acc (noise, blur, weather, digital), extra_corruptions_acc (the same mean
    over the extra corruptions, when any was evaluated),
    <attack>_<norm>_acc@<eps> per attack, norm and eps present (fgsm_linf_acc@1/255, pgd_l2_acc@0.5); AutoAttack at a
    single threat model is plain `autoattack_acc` as on RobustBench,
    imagenet_a_acc, imagenet_r_acc, imagenet_sketch_acc, imagenet_v2_acc: the companion test sets join the ImageNet
    row (any other metric of theirs is prefixed likewise: imagenet_a_pgd_linf_acc@1/255),
    skipped (unreadable images left out; only when some were), flags (number of sanity and random-init flags
    raised for the model; the md format spells out random-init and skipped images under the table).
The mCE columns appear only where mCE applies (ImageNet-C data with the AlexNet table); an earlier evaluation of a
label with other weights is its own row, `label#<sha256 prefix>`.
Cells run under the paper protocol carry the suffix " (paper)", adaptive attacks " (adaptive)". Missing cells are
empty (NaN), never 0. With ci=True every single-cell column gets <col>_ci_low / <col>_ci_high (Wilson 95%).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math

import pandas as pd

from robench.labels import fmt_eps
from robench.data.formats import leaderboard_placement
from robench.errors import RobenchError, suggest
from robench.report import calibration
from robench.report.results import _DEFAULT, Results, attack_rank, corruption_rank, corruption_summaries

INFO_COLUMNS = ["model", "variant", "arch", "params", "dataset"]
COUNT_COLUMNS = ["skipped", "rejected_hits", "flags"]  # skipped: unreadable images; rejected_hits: bf16/fp16 hits
# the fp32 re-check rejected (both only shown when non-zero)
FORMATS = ("md", "csv", "json", "latex")


def _suffix(protocol: str, adaptive: int) -> str:
    s = " (adaptive)" if adaptive else ""
    return s + (f" ({protocol})" if protocol and protocol != "standard" else "")


def _attack_base(attack: str, norm, eps, single_aa: bool) -> str:
    slug = attack.lower().replace(":", "-")
    if attack == "autoattack" and single_aa:
        return "autoattack_acc"
    return f"{slug}_{(norm or '').lower()}_acc@{fmt_eps(eps, norm)}"


def _as_results(stores) -> Results:
    return stores if isinstance(stores, Results) else Results(stores)


def filter_table(res: Results, variant=None, model=None, dataset=None) -> pd.DataFrame:
    """The results table restricted to variants / models (labels, registry names or globs) / datasets."""
    t = res.table

    def _list(x):
        return None if x is None else ([x] if isinstance(x, str) else list(x))

    def _only(t, col: str, wanted: list, what: str):
        known = sorted(set(t[col].dropna()))
        for w in wanted:
            if w not in known:
                raise RobenchError(f"no {what} '{w}' in the results" + suggest(w, known)
                                   + f"; {col}s: {', '.join(known) or 'none'}")
        return t[t[col].isin(wanted)]

    variant, model, dataset = _list(variant), _list(model), _list(dataset)
    if variant:
        t = _only(t, "variant", variant, "model with variant")
    if model:
        keep = set()
        for m in model:
            if any(ch in m for ch in "*?["):
                hit = {lab for lab, nm in zip(t["model"], t["model_name"])
                       if fnmatch.fnmatch(lab, m) or fnmatch.fnmatch(str(nm), m)}
                if not hit:
                    raise RobenchError(f"no model matches '{m}'; models: {', '.join(res.model_labels)}")
                keep |= hit
            else:
                keep |= set(res.check_models([m]))
        t = t[t["model"].isin(keep)]
    if dataset:
        t = _only(t, "dataset", dataset, "dataset")
    return t


def leaderboard(stores, sort: str | None = None, variant=None, model=None, dataset=None, ci: bool = False,
                alexnet=_DEFAULT) -> pd.DataFrame:
    """One row per model x dataset from one or more stores (paths, Store objects or a Results).

    sort: a column name (descending; ascending for mCE columns; empty cells last). By default AutoAttack accuracy
    when present, else clean accuracy. variant / model / dataset: keep only these (model accepts labels,
    registry names and globs). ci: add Wilson 95% bounds of single-cell columns. alexnet: the ImageNet-C table
    (default: the shipped suite; None: no mCE). `df.attrs["notes"]` lists why any mCE is empty.
    """
    res = _as_results(stores)
    t = filter_table(res, variant, model, dataset)
    if t.empty:
        raise RobenchError("no results to rank (the store has no finished cells, or the filters exclude all)")
    att = t[t["threat"] == "attack"]
    aa = att[att["attack"] == "autoattack"]
    single_aa = len(set(zip(aa["norm"], aa["eps"], aa["protocol"], aa["adaptive"]))) == 1
    summaries = corruption_summaries(t, alexnet)
    flags = res.flags()
    n_flags = flags.groupby("model").size().to_dict() if len(flags) else {}
    flag_names = _model_notes(flags, t)
    rejected = res.rejected_hits()
    calib = calibration.results_metrics(res)

    # a companion set (ImageNet-A, -R, -Sketch, -V2) joins its parent's row with prefixed columns: imagenet_a_acc
    place = {d: leaderboard_placement(d) for d in t["dataset"].dropna().unique()}
    t = t.assign(_row=[place.get(d, (d, None))[0] for d in t["dataset"]])
    rows, col_order, notes = [], {}, []
    curve_table = _curve_table(res, t)
    for (mlabel, dataset_), g in t.groupby(["model", "_row"], sort=False):
        first = g.iloc[0]
        row = {"model": mlabel, "variant": first["variant"], "arch": first["arch"],
               "params": None if pd.isna(first["params"]) else int(first["params"]), "dataset": dataset_}
        put = functools.partial(_put, row, col_order, ci)
        _cell_metrics(put, g, place, single_aa)
        _calibration_metrics(put, g, place, calib)
        _curve_metrics(put, curve_table, mlabel, dataset_)
        notes += _corruption_metrics(put, mlabel, dataset_, summaries, place)
        row["skipped"] = int(g["skipped"].max()) if "skipped" in g and g["skipped"].notna().any() else 0
        row["flags"] = int(n_flags.get(mlabel, 0))
        for f in flag_names.get(mlabel, []):
            notes.append(f"{mlabel}: {f}")
        rej = [rejected[(int(r.store), int(r.cell_id))] for r in g.itertuples()
               if (int(r.store), int(r.cell_id)) in rejected]
        if rej:  # bf16/fp16 runs: low-precision hits the fp32 re-check rejected, over all the model's cells
            row["rejected_hits"] = sum(rej)
        rows.append(row)

    metric_cols = sorted(col_order, key=lambda c: _rank_key(col_order[c]))
    counts = ((["skipped"] if any(r["skipped"] for r in rows) else [])
              + (["rejected_hits"] if any("rejected_hits" in r for r in rows) else []) + ["flags"])
    df = pd.DataFrame(rows).reindex(columns=INFO_COLUMNS + metric_cols + counts)
    for c in metric_cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = sort_leaderboard(df, sort)
    df.attrs["notes"] = list(dict.fromkeys(notes))
    return df


def _curve_table(res: Results, t: pd.DataFrame) -> pd.DataFrame:
    """The curves of the min-norm cells in `t` (robench.report.curves), at each threat model's standard eps and
    every fixed eps of that norm in the stores; empty without stores or min-norm cells."""
    att = t[t["threat"] == "attack"]
    if not res.stores or not att["eps"].astype(float).map(math.isinf).any():
        return pd.DataFrame()
    from robench.report.curves import curves

    return curves(res.stores)


def _curve_metrics(put, curves: pd.DataFrame, mlabel: str, dataset_: str) -> None:
    """median_eps* (over clean-correct samples; `<attack>_median_eps*` when several min-norm attacks ran) and
    `<attack>_acc@<eps>` read off the curve, beside the fixed-eps attacks of that norm."""
    if curves.empty:
        return
    single = curves["attack"].nunique() == 1
    for (attack, norm), g in curves[(curves.model == mlabel) & (curves.dataset == dataset_)].groupby(
            ["attack", "norm"], sort=False):
        slug, rank = attack.lower().replace(":", "-"), (2, False, 0, attack_rank(attack), attack, norm)
        put("median_eps*" if single else f"{slug}_median_eps*", float(g["median_eps_star"].iloc[0]), rank + (-1.0,))
        for r in g.itertuples():
            put(f"{slug}_acc@{fmt_eps(r.eps, norm)}", r.robust_acc, rank + (r.eps,), r.ci_low, r.ci_high)


def _model_notes(flags: pd.DataFrame, t: pd.DataFrame) -> dict[str, list[str]]:
    """Model-level flags spelled out under the table: random weights, unreadable images skipped."""
    notes = {}
    for r in flags.itertuples() if len(flags) else []:
        if r.flag == "random-init":
            notes.setdefault(r.model, []).append("RANDOM weights (random-init): not a trained model")
    for m, g in t.groupby("model", sort=False):
        if "skipped" in g and g["skipped"].fillna(0).max() > 0:
            notes.setdefault(m, []).append(f"{int(g['skipped'].max())} unreadable image(s) skipped")
    return notes


def _put(row: dict, col_order: dict, ci: bool, name, value, rank, lo=None, hi=None, suffix="", prefix=None):
    """Set one metric of a leaderboard row (and its Wilson bounds with `ci`); remember the column's rank."""
    if prefix:
        name = f"{prefix}_acc" if name == "clean_acc" else f"{prefix}_{name}"
        rank = (0, *rank[1:-1], 1, prefix) if rank[0] == 0 else (3, prefix, *rank)
    row[name + suffix] = value
    col_order.setdefault(name + suffix, rank)
    if ci and lo is not None:
        row[f"{name}_ci_low{suffix}"], row[f"{name}_ci_high{suffix}"] = lo, hi
        col_order.setdefault(f"{name}_ci_low{suffix}", rank + (0.1,))
        col_order.setdefault(f"{name}_ci_high{suffix}", rank + (0.2,))


def _cell_metrics(put, g: pd.DataFrame, place: dict, single_aa: bool) -> None:
    """The clean and attack cells of one model x row."""
    for r in g.itertuples():
        if r.dataset == "imagenet-o":  # OOD detection data: its accuracy means nothing, AUPR is its metric
            continue
        sfx = _suffix(r.protocol, r.adaptive)
        prot = (r.protocol != "standard", r.adaptive)
        pfx = place.get(r.dataset, (None, None))[1]
        if r.threat == "clean":
            put("clean_acc", r.value, (0, *prot, 0), r.ci_low, r.ci_high, sfx, pfx)
        elif r.threat == "attack" and not math.isinf(r.eps or 0):  # inf: a min-norm cell (_curve_metrics)
            base = _attack_base(r.attack, r.norm, r.eps, single_aa)
            put(base, r.value, (2, *prot, attack_rank(r.attack), r.attack, r.norm or "", r.eps or 0.0),
                r.ci_low, r.ci_high, sfx, pfx)


def _corruption_metrics(put, mlabel: str, dataset_: str, summaries: dict, place: dict) -> list[str]:
    """The corruption summaries (mean accuracy, mCE, per category, extra) of one model x row; returns notes."""
    notes = []
    for (m, d, protocol), s in summaries.items():
        if m != mlabel or place.get(d, (d, None))[0] != dataset_:
            continue
        pfx = place.get(d, (None, None))[1]
        sfx, prot = _suffix(protocol, 0), (protocol != "standard", 0)
        put("corruptions_acc", s.mean_acc, (1, *prot, 0), suffix=sfx, prefix=pfx)
        if s.mce is not None or s.note:  # mCE applies (ImageNet-C's AlexNet table): a value or why not
            put("corruptions_mce", s.mce, (1, *prot, 1), suffix=sfx, prefix=pfx)
            put("corruptions_rel_mce", s.rel_mce, (1, *prot, 2), suffix=sfx, prefix=pfx)
        for cat, v in s.category_acc.items():
            put(f"corruptions_{cat}_acc", v, (1, *prot, 3, corruption_rank(None, cat)[0], cat), suffix=sfx,
                prefix=pfx)
        if s.extra_acc:
            put("extra_corruptions_acc", sum(s.extra_acc.values()) / len(s.extra_acc), (1, *prot, 4),
                suffix=sfx, prefix=pfx)
        if s.note:
            notes.append(f"{mlabel} ({d}{sfx}): {s.note}")
    return notes


def _calibration_metrics(put, g: pd.DataFrame, place: dict, calib: dict) -> None:
    """Calibration of one model x row (robench.report.calibration; cells with recorded confidences): clean_ece,
    corruptions_ece / corruptions_rms_calib (mean over the benchmark corruptions, category != "extra", of each
    one's mean over severities), imagenet_o_aupr."""
    corr: dict = {}
    for r in g.itertuples():
        m = calib.get((int(r.store), int(r.cell_id)))
        if not m:
            continue
        sfx, prot = _suffix(r.protocol, r.adaptive), (r.protocol != "standard", r.adaptive)
        if r.dataset == "imagenet-o":
            if r.threat == "clean" and "aupr" in m:
                put("imagenet_o_aupr", m["aupr"], (3, "imagenet_o", 0), suffix=sfx)
        elif place.get(r.dataset, (None, None))[1] is None and r.threat == "clean":
            put("clean_ece", m["ece"], (0, *prot, 2), suffix=sfx)  # after the companion sets
        elif place.get(r.dataset, (None, None))[1] is None and r.threat == "corruption" and r.category != "extra":
            corr.setdefault((sfx, prot), []).append((r.corruption, m))
    for (sfx, prot), cells in corr.items():
        for k, key in enumerate(("ece", "rms_calib")):
            put(f"corruptions_{key}", calibration.corruption_mean([(c, m[key]) for c, m in cells]),
                (1, *prot, 5 + k), suffix=sfx)


def _rank_key(rank: tuple) -> tuple:
    return tuple((0, x) if isinstance(x, (int, float)) else (1, str(x)) for x in rank)


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c not in INFO_COLUMNS and c not in COUNT_COLUMNS and "_ci_" not in c]


def sort_leaderboard(df: pd.DataFrame, sort: str | None = None) -> pd.DataFrame:
    if sort is None:
        aa = [c for c in metric_columns(df) if c.startswith("autoattack") and "(" not in c]
        sort = aa[0] if aa else ("clean_acc" if "clean_acc" in df else None)
        if sort is None:
            return df.reset_index(drop=True)
    if sort not in df.columns:
        raise RobenchError(f"cannot sort by '{sort}': no such column" + suggest(sort, df.columns)
                           + f"; columns: {', '.join(df.columns)}")
    ascending = ("mce" in sort or sort in ("model", "variant", "arch", "dataset")
                 or any(k in sort for k in ("_ece", "_rms_calib")))  # calibration errors: lower is better
    return df.sort_values(sort, ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


# ---- formatting ------------------------------------------------------------------------------------------------

def _pct(v, digits=2) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}"


def _params(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v / 1e6:.2f}M"


def display_table(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and string rows for md/latex/terminal: percentages, intervals folded into '82.10 [79.0, 85.0]'."""
    cols = [c for c in df.columns if "_ci_" not in c]
    header = [c for c in cols]
    rows = []
    for _, r in df.iterrows():
        out = []
        for c in cols:
            v = r[c]
            if c == "params":
                out.append(_params(v))
            elif c in INFO_COLUMNS:
                out.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
            elif c in COUNT_COLUMNS:
                out.append(str(int(v)) if v and not pd.isna(v) else "0")
            elif c.endswith("median_eps*"):  # a norm, not an accuracy
                out.append("" if pd.isna(v) else f"{v:.4g}")
            else:
                s = _pct(v)
                lo_c, hi_c = _ci_cols(c)
                if s and lo_c in df.columns and not pd.isna(r[lo_c]):
                    s += f" [{_pct(r[lo_c], 1)}, {_pct(r[hi_c], 1)}]"
                out.append(s)
        rows.append(out)
    return header, rows


def _ci_cols(col: str) -> tuple[str, str]:
    base, sep, sfx = col.partition(" (")
    sfx = sep + sfx
    return f"{base}_ci_low{sfx}", f"{base}_ci_high{sfx}"


def markdown_table(header: list[str], rows: list[list[str]], right=None) -> str:
    """A GitHub markdown table; `right` = set of column indexes to right-align (default: all but the first)."""
    right = set(range(1, len(header))) if right is None else set(right)
    lines = ["| " + " | ".join(str(h).replace("|", "\\|") for h in header) + " |",
             "|" + "|".join("---:" if i in right else ":---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(x).replace("|", "\\|") for x in r) + " |" for r in rows]
    return "\n".join(lines)


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        s = s.replace(a, b)
    return s


def format_leaderboard(df: pd.DataFrame, fmt: str = "md") -> str:
    """The leaderboard as md (GitHub table, %), csv (fractions), json (records, fractions, null = missing) or
    latex (booktabs tabular, %)."""
    if fmt not in FORMATS:
        raise RobenchError(f"unknown leaderboard format '{fmt}'" + suggest(fmt, FORMATS)
                           + f"; use {', '.join(FORMATS)}")
    notes = df.attrs.get("notes", [])
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records", double_precision=10)), indent=1) + "\n"
    header, rows = display_table(df)
    if fmt == "md":
        text = markdown_table(header, rows, right=[i for i, h in enumerate(header) if h not in
                                                   ("model", "variant", "arch", "dataset")])
        text += "\n\n" + _footnote(df) + "."
        if notes:
            text += "\n" + "\n".join(f"- {n}" for n in notes)
        return text + "\n"
    align = "".join("l" if h in ("model", "variant", "arch", "dataset") else "r" for h in header)
    lines = [r"\begin{tabular}{" + align + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(x) for x in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return f"% {_footnote(df)}\n" + "\n".join(lines) + "\n"


def _footnote(df: pd.DataFrame) -> str:
    mce = any("mce" in c for c in df.columns)
    text = ("Accuracies, mCE and relative mCE in %" if mce else "Accuracies in %") + "; empty = not evaluated"
    if "corruptions_acc" in df.columns and not mce:
        text += " (mCE needs ImageNet-C's AlexNet errors: ImageNet data only)"
    if any(c.startswith("extra_corruptions_acc") for c in df.columns):
        text += ("; corruptions_acc, its categories and mCE are over the benchmark corruptions only, "
                 "extra_corruptions_acc over the suite's extra corruptions")
    if "skipped" in df.columns:
        text += "; skipped = unreadable images left out"
    text += _calibration_footnote(df)
    return text


def _calibration_footnote(df: pd.DataFrame) -> str:
    if not any(c.endswith(("_ece", "_rms_calib", "_aupr")) for c in df.columns):
        return ""
    return ("; ECE (15 bins) and RMS calibration error in %, lower is better (softmax confidence of the prediction)"
            + ("; imagenet_o_aupr: ImageNet-O detection AUPR in %" if "imagenet_o_aupr" in df.columns else ""))
