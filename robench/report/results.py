"""Results of one or more stores side by side, cell keys and labels, and per-model corruption aggregates.

Every reader here works on the tidy table of `Store.results()` (one row per model x done cell), plus a `store`
column (index into the list of stores) so per-sample outcomes can be fetched for paired tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robench.labels import fmt_eps, weights_tags
from robench.errors import RobenchError, suggest
from robench.report.stats import AlexNetTable, CorruptionSummary, corruption_summary

# a cell is the same cell in two stores (or a store and a CSV) when these agree (the model label aside)
CELL_KEY = ("dataset", "threat", "attack", "norm", "eps", "corruption", "severity", "protocol", "adaptive")
KEY = ("model",) + CELL_KEY
CATEGORY_ORDER = ("noise", "blur", "weather", "digital", "extra")


def __getattr__(name):
    # CORRUPTION_ORDER: the order of Hendrycks & Dietterich's tables (display only), from the corruption registry.
    # Computed on first use, and the registry imported here: robench.corrupt imports torch (~1 s measured), which
    # reading a store does not need.
    if name == "CORRUPTION_ORDER":
        from robench.corrupt import registry  # local: robench.corrupt imports torch (~1.7 s) that tables don't need

        return registry.names(builtin_only=True)
    raise AttributeError(name)


def attack_order() -> tuple[str, ...]:
    """Attack kinds in display order, from the attack-kind registry. Imported here, not at module level: importing
    robench.attack loads torch and every kind (measured 2.3 s against 0.06 s for robench.report alone), which
    `robench report` / `leaderboard` on a store never need otherwise."""
    import robench.attack

    return robench.attack.kind_names()


def attack_rank(attack) -> int:
    order = attack_order()
    return order.index(attack) if attack in order else len(order)


def corruption_rank(name, category=None) -> tuple:
    cat = CATEGORY_ORDER.index(category) if category in CATEGORY_ORDER else len(CATEGORY_ORDER)
    from robench.corrupt import registry  # local: see __getattr__

    order = registry.names()  # registered corruptions (built in, then user ones) in display order
    known = order.index(name) if name in order else len(order)
    return (cat, known, str(name or ""))


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Make key columns comparable across stores and CSV round trips: None for missing strings, eps rounded to
    1e-9, severity and adaptive as ints (None when missing)."""
    df = df.copy()

    def put(col, values):
        df[col] = pd.Series(values, index=df.index, dtype=object)

    for col in ("model", "dataset", "threat", "attack", "norm", "corruption", "category", "protocol"):
        if col in df:
            put(col, [None if _missing(v) else str(v) for v in df[col]])
    if "eps" in df:
        put("eps", [None if _missing(v) else round(float(v), 9) for v in df["eps"]])
    if "severity" in df:
        put("severity", [None if _missing(v) else int(v) for v in df["severity"]])
    if "adaptive" in df:
        df["adaptive"] = [0 if _missing(v) else int(v) for v in df["adaptive"]]
    if "protocol" in df:
        put("protocol", [p or "standard" for p in df["protocol"]])
    return df


def index_rows(df: pd.DataFrame, key=KEY) -> dict:
    """{key tuple: row} of a normalized table (later rows win)."""
    return {tuple(r[c] for c in key): r for _, r in df.iterrows()}


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


def cell_label(row, dataset: bool = False) -> str:
    """Short human name of a cell: 'clean', 'gaussian_noise s3', 'pgd Linf ε=4/255', with protocol markers."""
    threat = row["threat"]
    if threat == "clean":
        s = "clean"
    elif threat == "corruption":
        s = f"{row['corruption']} s{row['severity']}" if row["severity"] is not None else str(row["corruption"])
    elif threat == "attack":
        s = f"{row['attack']} {row['norm'] or ''} ε={fmt_eps(row['eps'], row['norm'])}".replace("  ", " ")
    else:
        s = str(threat)
    if row.get("adaptive"):
        s += " adaptive"
    if (row.get("protocol") or "standard") != "standard":
        s += f" ({row['protocol']})"
    return f"{row['dataset']} · {s}" if dataset else s


def cell_sort_key(row) -> tuple:
    """Order cells as a reader expects: dataset, standard before paper, clean, corruptions, attacks by strength."""

    def v(col, default):
        x = row.get(col)
        return default if _missing(x) else x

    threat_rank = {"clean": 0, "corruption": 1, "attack": 2}.get(v("threat", ""), 3)
    attack = v("attack", "")
    return (v("dataset", ""), v("protocol", "standard") != "standard", int(v("adaptive", 0)), threat_rank,
            corruption_rank(v("corruption", ""), v("category", None)), int(v("severity", 0)), attack_rank(attack), attack,
            v("norm", ""), float(v("eps", 0.0)))


class Results:
    """The results of one or more stores (paths or open Store objects), side by side.

    `table` is the normalized tidy table with a `store` column; when two stores hold the same model label and
    cell, the later store wins (and within a store, the later cell).
    """

    def __init__(self, stores):
        from robench.run.store import Store

        if isinstance(stores, (str, Path, Store)):
            stores = [stores]
        if not stores:
            raise RobenchError("no results store given")
        self.stores = [s if isinstance(s, Store) else Store(s, readonly=True) for s in stores]
        frames = []
        for i, s in enumerate(self.stores):
            df = distinguish_evaluations(s.results())
            df["store"] = i
            frames.append(df)
        table = normalize(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
        self.table = table.drop_duplicates(list(KEY), keep="last").reset_index(drop=True)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "Results":
        """Results of a tidy table already in memory (robench.evaluate's DataFrame; flags from df.attrs["flags"]).
        Per-sample outcomes are not available (no store)."""
        self = cls.__new__(cls)
        self.stores = []
        table = df.copy()
        table["store"] = 0
        self.table = normalize(table).drop_duplicates(list(KEY), keep="last").reset_index(drop=True)
        flags = df.attrs.get("flags")
        self._flags = flags.copy() if isinstance(flags, pd.DataFrame) else pd.DataFrame(columns=["model", "flag"])
        return self

    @property
    def model_labels(self) -> list[str]:
        return list(dict.fromkeys(self.table["model"]))

    def outcomes(self, store: int, cell_id: int) -> pd.DataFrame:
        if not self.stores:
            raise RobenchError("per-sample outcomes need a results store (these results are an in-memory table)")
        return self.stores[int(store)].outcomes(int(cell_id))

    def _concat(self, method: str) -> pd.DataFrame:
        frames = []
        for i, s in enumerate(self.stores):
            df = getattr(s, method)()
            df.insert(0, "store", i)
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def flags(self) -> pd.DataFrame:
        """Flags of every store, under the labels of `table` (an earlier evaluation's as `label#sha`)."""
        if getattr(self, "_flags", None) is not None:
            return self._flags
        df = self._concat("flags")
        if df.empty or "checkpoint_sha256" not in df:
            return df
        names = {(st, sha, m): lab for st, sha, m, lab in zip(self.table["store"], self.table["checkpoint_sha256"],
                                                               self.table["model_name_label"], self.table["model"])}
        df["model"] = [names.get((st, sha, m), m) for st, sha, m in zip(df["store"], df["checkpoint_sha256"],
                                                                         df["model"])]
        return df

    def rejected_hits(self) -> dict:
        """{(store, cell_id): low-precision "misclassified" verdicts rejected by the fp32 re-check} for the attack
        cells run under --precision bf16/fp16 (cells run in fp32 have no entry)."""
        import json

        out = {}
        for i, s in enumerate(self.stores):
            for cell_id, ej in s.extras().itertuples(index=False):
                ex = json.loads(ej or "{}")
                if "rejected_hits" in ex:
                    out[(i, int(cell_id))] = int(ex["rejected_hits"])
        return out

    def check_models(self, names) -> list[str]:
        """Resolve model labels (or registry names) to labels; RobenchError naming the known ones otherwise."""
        labels = self.model_labels
        by_name = dict(zip(self.table["model_name"], self.table["model"]))
        out = []
        for n in names:
            if n in labels:
                out.append(n)
            elif n in by_name:
                out.extend(lab for lab, nm in zip(self.table["model"], self.table["model_name"])
                           if nm == n and lab not in out)
            else:
                raise RobenchError(f"no model '{n}' in the results" + suggest(n, labels)
                                   + f"; models: {', '.join(labels) or 'none'}")
        return list(dict.fromkeys(out))


def _concatenated(name: str):
    def accessor(self) -> pd.DataFrame:
        return self._concat(name)

    accessor.__name__, accessor.__qualname__ = name, f"Results.{name}"
    accessor.__doc__ = f"Store.{name}() of every store, one frame (column `store`: the store's index)."
    return accessor


# The Store accessors that Results passes through unchanged, concatenated over its stores (flags and extras are
# relabelled above).
for _name in ("runs", "models", "diagnostics"):
    setattr(Results, _name, _concatenated(_name))


def distinguish_evaluations(df: pd.DataFrame) -> pd.DataFrame:
    """Two evaluations of one label with different weights (the checkpoint at a path changed, or random weights)
    never merge into one row: the latest keeps the label, earlier ones become `label#<tag>` (weights_tags: a hex
    prefix of the weights sha, as long as needed to tell every weights of the label apart)."""
    if "checkpoint_sha256" not in df:
        return df
    df = df.copy()
    df["model_name_label"] = df["model"]  # the label as stored (flags and runs refer to it)
    for label, g in df.groupby("model", sort=False):
        shas = list(dict.fromkeys(g["checkpoint_sha256"]))  # in model order: the last is the latest
        tags = weights_tags(shas)
        for sha in shas[:-1]:
            df.loc[(df["model"] == label) & (df["checkpoint_sha256"] == sha), "model"] = f"{label}#{tags[sha]}"
    return df




def alexnet_table() -> AlexNetTable | None:
    """ImageNet-C's AlexNet errors from the corruption suite (robench.corrupt.get_suite, else the imagenet-c TOML).
    None when neither is available."""
    try:
        from robench.corrupt import get_suite  # type: ignore[attr-defined]

        suite = get_suite("imagenet-c")
        err = {}
        for c in suite.corruptions:
            try:
                e = suite.alexnet_err(c)
            except (KeyError, ValueError, TypeError):
                e = None
            if e is not None and suite.category(c) != "extra":
                err[str(c)] = float(e)
        if err:
            return AlexNetTable(err, float(suite.alexnet_clean_err))
    except (ImportError, AttributeError, RobenchError, TypeError, KeyError):
        pass
    try:
        from robench.suites import load_suite

        data = load_suite("corruptions", "imagenet-c")
        cors = data.get("corruptions", {})
        err = {c: float(v["alexnet_err"]) for c, v in cors.items()
               if isinstance(v, dict) and v.get("alexnet_err") is not None and v.get("category") != "extra"}
        if err and data.get("alexnet_clean_err") is not None:
            return AlexNetTable(err, float(data["alexnet_clean_err"]))
    except (RobenchError, AssertionError, ModuleNotFoundError, TypeError, ValueError, KeyError):
        pass
    return None


_DEFAULT = object()


def corruption_summaries(table: pd.DataFrame, alexnet=_DEFAULT) -> dict:
    """{(model, dataset, protocol): CorruptionSummary} for every model with corruption cells (adaptive cells aside).
    alexnet: an AlexNetTable, None (no mCE), or by default the shipped ImageNet-C table."""
    shipped = alexnet is _DEFAULT  # the shipped table is ImageNet-C's: use it on ImageNet data only
    if shipped:
        alexnet = alexnet_table()
    out = {}
    cor = table[(table["threat"] == "corruption") & (table["adaptive"] == 0)]
    for (model, dataset, protocol), g in cor.groupby(["model", "dataset", "protocol"], sort=False):
        clean = table[(table["model"] == model) & (table["dataset"] == dataset) & (table["threat"] == "clean")
                      & (table["protocol"] == protocol)]
        clean_acc = float(clean["value"].iloc[-1]) if len(clean) else None
        acc = {(r.corruption, r.severity if r.severity is not None else 0): r.value for r in g.itertuples()}
        cats = {r.corruption: r.category for r in g.itertuples()}
        # mCE is relative to AlexNet's ImageNet-C errors: only meaningful on ImageNet(-C) itself
        from robench.data.formats import has_mce

        other = shipped and not has_mce(str(dataset))
        summary = corruption_summary(acc, cats, clean_acc, None if other else alexnet)
        if other:
            summary.note = None
        out[(model, dataset, protocol)] = summary
    return out


__all__ = ["Results", "CorruptionSummary", "alexnet_table", "corruption_summaries", "cell_label",
           "normalize", "CELL_KEY", "KEY"]
