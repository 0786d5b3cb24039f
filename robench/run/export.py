"""`robench export`: a store's tidy results (one row per model x cell), its attention diagnostics, or its per-sample
outcomes, written as csv, parquet, jsonl or json (records), the format taken from the file's suffix."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from robench.errors import RobenchError
from robench.paths import check_file, write_file
from robench.run.eps_star import read_eps_star
from robench.run.store import Store

EXPORT_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "json"}
TABLES = ("results", "diagnostics", "samples")
PER_SAMPLE_COLUMNS = ["model", "model_name", "checkpoint_sha256", "dataset", "data_fingerprint", "threat", "attack",
                      "norm", "eps", "corruption", "severity", "protocol", "adaptive", "cell_id", "sample",
                      "sample_id", "label", "pred", "correct", "final_pred", "confidence", "nll"]


def export_format(dest, fmt: str | None = None) -> str:
    """The format of an export: from the file's suffix (.csv, .parquet, .jsonl, .json); an explicit fmt must agree
    with the suffix. Unknown suffixes and formats are errors (never CSV text under another name)."""
    dest = Path(dest)
    known = ", ".join(EXPORT_SUFFIXES)
    if fmt is not None and fmt not in EXPORT_SUFFIXES.values():
        raise RobenchError(f"unknown export format '{fmt}' (csv, parquet, jsonl, json)")
    by_suffix = EXPORT_SUFFIXES.get(dest.suffix.lower())
    if by_suffix is None:
        raise RobenchError(f"cannot tell the export format of {dest}: use a file name ending in {known}")
    if fmt is not None and fmt != by_suffix:
        raise RobenchError(f"--format {fmt} does not match the file name {dest} (a {by_suffix} file)")
    if by_suffix == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise RobenchError("parquet export needs pyarrow: pip install pyarrow") from None
    return by_suffix


def per_sample(store: Store) -> pd.DataFrame:
    """One row per model x done cell x sample (columns PER_SAMPLE_COLUMNS). `sample` is the position in the
    evaluated selection; `sample_id` the sample's identity from the store's sample_ids table (relative file path
    for folder formats, dataset index for array formats), else the position itself. `pred` is the model's
    prediction on the cell's input (for attack cells: on the clean image, from the clean cell of the same model
    and data), `final_pred` for attack cells the prediction on the final (adversarial) image; `correct` is the
    cell's verdict (robust, for attacks). `confidence`: the fp32 softmax probability of the cell's own prediction
    (final_pred for attack cells), `nll`: -log softmax of the true class on the cell's input; both empty in a store
    written before they were recorded. Stores with minimum-norm cells add `eps_star` (robench.run.eps_star)."""
    df = store.query(f"""
        SELECT m.label AS model, m.name AS model_name, m.checkpoint_sha256, c.model_id, c.dataset, c.threat,
               c.attack, c.norm, c.eps, c.corruption, c.severity, c.protocol, c.adaptive, c.cell_id, c.params_json,
               o.sample, o.correct, o.pred, {store.outcome_extras_sql("o.")}
        FROM outcomes o JOIN cells c USING(cell_id) JOIN models m USING(model_id)
        WHERE c.status='done' AND c.threat != 'diagnostics' ORDER BY m.model_id, c.cell_id, o.sample""")
    df["data_fingerprint"] = [str(json.loads(p or "{}").get("data_fingerprint", "")) for p in df.pop("params_json")]
    df["protocol"] = df["protocol"].fillna("standard")
    key = ["model_id", "data_fingerprint", "protocol", "sample"]
    clean = df.loc[df["threat"] == "clean", key + ["pred"]].drop_duplicates(key, keep="last")
    df = df.merge(clean.rename(columns={"pred": "clean_pred"}), on=key, how="left")
    attack = df["threat"] == "attack"
    df["final_pred"] = df["pred"].where(attack).astype("Int64")
    df["pred"] = df["pred"].where(~attack, df["clean_pred"]).astype("Int64")
    ids = (store.query("SELECT data_fingerprint, sample, sample_id, label FROM sample_ids")
           if store.has_table("sample_ids") else pd.DataFrame(columns=["data_fingerprint", "sample", "sample_id",
                                                                       "label"]))
    df = df.merge(ids, on=["data_fingerprint", "sample"], how="left")
    df["sample_id"] = df["sample_id"].where(df["sample_id"].notna(), df["sample"].astype(str))
    df["label"] = pd.to_numeric(df["label"], errors="coerce").astype("Int64")
    eps = read_eps_star(store)
    if eps.empty:
        return df[PER_SAMPLE_COLUMNS]
    # minimum-norm cells: each sample's eps* (0: clean-misclassified, inf: none found); empty for other cells
    df = df.merge(eps, on=["cell_id", "sample"], how="left")
    return df[PER_SAMPLE_COLUMNS + ["eps_star"]]


def export(store: Store, dest, fmt: str | None = None, table: str = "results") -> Path:
    """Write a table of the store (results: one row per model x cell; diagnostics: the attention diagnostics
    rows; samples: per_sample) as csv, parquet, jsonl or json (records), the format taken from dest's suffix (see
    export_format). A store without rows of that table is an error (never a header-only file)."""
    if table not in TABLES:
        raise RobenchError(f"unknown export table '{table}' ({', '.join(TABLES)})")
    fmt = export_format(dest, fmt)
    dest = check_file(Path(dest), "export file")
    df = {"results": store.results, "diagnostics": store.diagnostics, "samples": lambda: per_sample(store)}[table]()
    if df.empty:
        what = {"results": "finished cells", "diagnostics": "diagnostics rows", "samples": "per-sample outcomes"}
        raise RobenchError(f"nothing to export: {store.path} holds no {what[table]}")
    writers = {"csv": lambda p: df.to_csv(p, index=False),
               "jsonl": lambda p: df.to_json(p, orient="records", lines=True),
               "json": lambda p: df.to_json(p, orient="records", indent=1),
               "parquet": lambda p: df.to_parquet(p, index=False)}
    return write_file(dest, writers[fmt], "export file")
