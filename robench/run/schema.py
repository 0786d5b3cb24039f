"""The results store's schema (robench.run.store): its tables, the columns added within schema version 2, and the
column order of the tidy export."""

SCHEMA_VERSION = 2
STORE_NAME = "robench.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, started REAL, ended REAL, status TEXT, robench_version TEXT, torch_version TEXT,
    timm_version TEXT, python_version TEXT, device TEXT, gpu_name TEXT, precision TEXT, seed INTEGER,
    world_size INTEGER, command TEXT, host TEXT, pid INTEGER, skipped INTEGER);
CREATE TABLE IF NOT EXISTS models (
    model_id INTEGER PRIMARY KEY, label TEXT, name TEXT, variant TEXT, arch TEXT, params INTEGER,
    checkpoint TEXT, checkpoint_sha256 TEXT, UNIQUE(label, name, checkpoint_sha256));
CREATE TABLE IF NOT EXISTS cells (
    cell_id INTEGER PRIMARY KEY, model_id INTEGER REFERENCES models, dataset TEXT, threat TEXT, attack TEXT,
    norm TEXT, eps REAL, corruption TEXT, severity INTEGER, category TEXT, protocol TEXT, adaptive INTEGER,
    params_json TEXT, params_hash TEXT, n_expected INTEGER, n_chunks INTEGER, status TEXT, run_id INTEGER,
    UNIQUE(model_id, params_hash));
CREATE TABLE IF NOT EXISTS chunks (
    cell_id INTEGER, chunk INTEGER, n INTEGER, skipped INTEGER, run_id INTEGER, extra_json TEXT,
    PRIMARY KEY(cell_id, chunk));
CREATE TABLE IF NOT EXISTS outcomes (
    cell_id INTEGER, sample INTEGER, correct INTEGER, pred INTEGER, confidence REAL, nll REAL,
    PRIMARY KEY(cell_id, sample)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aggregates (
    cell_id INTEGER PRIMARY KEY, n INTEGER, correct INTEGER, value REAL, ci_low REAL, ci_high REAL,
    skipped INTEGER, extra_json TEXT);
CREATE TABLE IF NOT EXISTS flags (
    flag_id INTEGER PRIMARY KEY, model_id INTEGER, flag TEXT, message TEXT, cells_json TEXT, run_id INTEGER);
CREATE TABLE IF NOT EXISTS diagnostics (
    cell_id INTEGER, layer INTEGER, head INTEGER, stat TEXT, value REAL);
CREATE TABLE IF NOT EXISTS sample_ids (
    data_fingerprint TEXT, sample INTEGER, sample_id TEXT, label INTEGER, PRIMARY KEY(data_fingerprint, sample));
"""
# the tables a store must have to be read (sample_ids came later within schema version 2: optional)
REQUIRED_TABLES = ("meta", "runs", "models", "cells", "chunks", "outcomes", "aggregates", "flags", "diagnostics")

OUTCOME_EXTRAS = ("confidence", "nll")  # nullable per-sample columns added within schema version 2
CELL_COLUMNS = ("dataset", "threat", "attack", "norm", "eps", "corruption", "severity", "category", "protocol",
                "adaptive")
EXPORT_COLUMNS = ["run_id", "model", "model_name", "variant", "arch", "params", "checkpoint_sha256", "dataset", "n",
                  "threat", "attack", "norm", "eps", "corruption", "severity", "category", "metric", "value",
                  "ci_low", "ci_high", "protocol", "adaptive", "cell_id", "skipped", "evaluated"]


def upgrade(db) -> None:
    """Add the columns and tables added within schema version 2 that an older store lacks: runs.pid, runs.skipped,
    sample_ids, outcomes.confidence/nll (sqlite3.OperationalError on a read-only file)."""
    db.execute(SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS sample_ids"):])
    cols = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    for col in ("pid", "skipped"):
        if col not in cols:
            db.execute(f"ALTER TABLE runs ADD COLUMN {col} INTEGER")
    have = {r[1] for r in db.execute("PRAGMA table_info(outcomes)")}
    for col in OUTCOME_EXTRAS:
        if col not in have:
            db.execute(f"ALTER TABLE outcomes ADD COLUMN {col} REAL")
