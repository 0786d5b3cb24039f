"""The results store: one SQLite file (WAL mode) per out dir, crash-safe by construction.

Tables
    meta        schema version, robench version that created the store
    runs        provenance of every invocation (versions, device, precision, seed, command line, start/end)
    models      name, label, variant, arch, params, checkpoint path + sha256
    cells       one threat on one model and dataset (every parameter in params_json; params_hash decides reuse)
    chunks      which sample chunks of a cell are committed
    outcomes    per-sample results: correct (0/1), predicted class, its softmax confidence and the NLL of the
                true class (fp32; both NULL in stores written before they were recorded)
    aggregates  n, correct, accuracy and its 95% Wilson interval, per done cell
    flags       sanity flags (gradient masking signs) naming the cells that raised them
    diagnostics attention diagnostics rows (layer, head, stat, value) of diagnostics cells
    sample_ids  per data fingerprint, each evaluated sample's identity (file path or dataset index) and label
    eps_star    (optional, robench.run.eps_star) per-sample eps* of minimum-norm attack cells

Readers open it read-only (`Store(path, readonly=True)`: mode=ro, nothing created or altered; one opened before a
run changed the file reads it again); a file without robench's tables is "not a robench store". A chunk's outcomes and its `chunks` row are written in one transaction;
a cell becomes 'done' (with its aggregate) only when all its chunks are in: a crash loses at most one chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from robench._version import __version__
from robench.intervals import wilson
from robench.errors import RobenchError
from robench.paths import make_dir, probe_dir as _probe_dir

from robench.run.schema import (CELL_COLUMNS, EXPORT_COLUMNS, OUTCOME_EXTRAS, REQUIRED_TABLES, SCHEMA,  # noqa: F401
                                 SCHEMA_VERSION, STORE_NAME, upgrade)


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:20]


def store_path(out) -> Path:
    out = Path(out)
    return out if out.suffix in (".sqlite", ".db") else out / STORE_NAME


class Store:
    """A results store. `Store(out_dir)` opens (or with create=True creates) out_dir/robench.sqlite."""

    def __init__(self, out, create: bool = False, readonly: bool = False):
        """readonly: open with SQLite's mode=ro (readers: leaderboard, report, export, check, compare); nothing in
        the file is created or changed. create: make the store (and its directory) when absent."""
        self.path = store_path(out)
        self.readonly = readonly
        if self.path.is_dir():
            raise RobenchError(f"not a robench store: {self.path} is a directory")
        if not self.path.exists():
            if not create or readonly:
                raise RobenchError(f"no results store at {self.path} (run `robench eval` or `robench sweep` first)")
            _probe_dir(make_dir(self.path.parent, "output directory"))
        self._stamp = None  # the file's (size, mtime, inode) while it is read as immutable
        try:
            if readonly:
                self._open_readonly()
            else:
                self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self._check_schema()
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self._init_schema()
        except sqlite3.DatabaseError as e:
            raise RobenchError(f"not a robench store: {self.path} ({e})") from None

    def _open_readonly(self):
        """mode=ro. No -wal file: no writer is open and nothing is left to checkpoint, so the file is read as it is
        (immutable: SQLite creates no -wal/-shm beside it), and every read checks that it did not change since
        (`_read`); else read through the existing WAL, which keeps each read consistent."""
        wal = Path(f"{self.path}-wal").exists()
        uri = f"file:{quote(str(self.path.absolute()))}?mode=ro" + ("" if wal else "&immutable=1")
        self._stamp = None if wal else _file_stamp(self.path)
        self.db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)

    def _read(self, read):
        """read(); if the file read as immutable changed (a run wrote to it), open it again and read again."""
        for _ in range(5):
            try:
                out = read()
            except Exception:  # sqlite3's, or pandas' wrapping of it
                if self._stamp is None or _file_stamp(self.path) == self._stamp:
                    raise
                out = None
            if self._stamp is None or _file_stamp(self.path) == self._stamp:
                return out
            self.db.close()
            self._open_readonly()
        raise RobenchError(f"results store {self.path} kept changing while it was read: rerun the command")

    def _check_schema(self):
        """A non-empty database must hold robench's tables at this schema version (a foreign SQLite file is
        refused before anything is written to it); an empty one is only good for writing."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables and not self.readonly:
            return
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
            if "meta" in tables else None
        if row is not None and row[0] != str(SCHEMA_VERSION):
            made_by = self.db.execute("SELECT value FROM meta WHERE key='robench_version'").fetchone()
            raise RobenchError(f"results store {self.path} has schema version {row[0]} (made by robench "
                               f"{made_by[0] if made_by else '?'}); this robench {__version__} reads "
                               f"version {SCHEMA_VERSION}: use a new --out directory")
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing or row is None:
            what = ("no robench tables" if len(missing) == len(REQUIRED_TABLES) else
                    f"missing {', '.join(missing)}" if missing else "no schema version")
            raise RobenchError(f"not a robench store: {self.path} ({what})")

    def _init_schema(self):
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" in tables:
            try:  # columns and tables added within schema version 2; a read-only file is left as it is
                upgrade(self.db)
                self.mark_stale_runs()
            except sqlite3.OperationalError:
                pass
            return
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.db.execute("INSERT INTO meta VALUES ('schema_version', ?), ('robench_version', ?)",
                            (str(SCHEMA_VERSION), __version__))

    def mark_stale_runs(self) -> int:
        """Runs still marked 'running' whose process (same host, recorded pid) no longer exists were killed:
        mark them 'interrupted'. Returns how many."""
        rows = self.db.execute("SELECT run_id, pid FROM runs WHERE status='running' AND host=? AND pid IS NOT NULL",
                               (platform.node(),)).fetchall()
        dead = [run_id for run_id, pid in rows if not _pid_alive(int(pid))]
        if dead:
            with self.transaction():
                self.db.executemany("UPDATE runs SET status='interrupted' WHERE run_id=? AND status='running'",
                                    [(r,) for r in dead])
        return len(dead)

    @contextmanager
    def transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self):
        self.db.close()

    # ---- runs and models -------------------------------------------------------------------------------------
    def start_run(self, **prov) -> int:
        prov = {"pid": os.getpid(), **prov}
        cols = ["started", "status", "robench_version"] + list(prov)
        vals = [time.time(), "running", __version__] + list(prov.values())
        with self.transaction():
            cur = self.db.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)
        return cur.lastrowid

    def end_run(self, run_id: int, status: str = "done", skipped: int | None = None):
        with self.transaction():
            self.db.execute("UPDATE runs SET ended=?, status=? WHERE run_id=?", (time.time(), status, run_id))
            if skipped is not None:
                self.db.execute("UPDATE runs SET skipped=? WHERE run_id=?", (int(skipped), run_id))

    def has_outcomes(self) -> bool:
        """Whether any chunk was ever committed (a store without one holds no results)."""
        return self.db.execute("SELECT 1 FROM outcomes LIMIT 1").fetchone() is not None

    def model_id(self, *, label, name, variant, arch, params, checkpoint, checkpoint_sha256) -> int:
        key = (label, name, checkpoint_sha256 or "")
        row = self.db.execute("SELECT model_id FROM models WHERE label=? AND name=? AND checkpoint_sha256=?",
                              key).fetchone()
        if row:
            return row[0]
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO models (label, name, variant, arch, params, checkpoint, checkpoint_sha256) "
                "VALUES (?,?,?,?,?,?,?)", (label, name, variant, arch, params, str(checkpoint or ""), key[2]))
        return cur.lastrowid

    # ---- cells, chunks, outcomes ------------------------------------------------------------------------------
    def cell_id(self, model_id: int, params: dict, n_expected: int, n_chunks: int, run_id: int) -> int:
        """The cell for these exact parameters (created if new). Any parameter change makes a different cell."""
        h = params_hash(params)
        row = self.db.execute("SELECT cell_id, n_expected FROM cells WHERE model_id=? AND params_hash=?",
                              (model_id, h)).fetchone()
        if row:
            return row[0]
        cols = {c: params.get(c) for c in CELL_COLUMNS}
        cols["adaptive"] = int(bool(cols["adaptive"]))
        with self.transaction():
            cur = self.db.execute(
                f"INSERT INTO cells (model_id, {', '.join(cols)}, params_json, params_hash, n_expected, n_chunks, "
                f"status, run_id) VALUES (?, {', '.join('?' * len(cols))}, ?, ?, ?, ?, 'pending', ?)",
                (model_id, *cols.values(), json.dumps(params, sort_keys=True, default=str), h, n_expected,
                 n_chunks, run_id))
        return cur.lastrowid

    def done_chunks(self, cell_id: int) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT chunk FROM chunks WHERE cell_id=?", (cell_id,))}

    def cell_status(self, cell_id: int) -> str:
        return self.db.execute("SELECT status FROM cells WHERE cell_id=?", (cell_id,)).fetchone()[0]

    def write_chunk(self, chunk: int, results: dict, run_id: int, skipped: int = 0, extras: dict | None = None,
                    _fault=None):
        """Atomically record one chunk for several cells: results = {cell_id: (samples, correct, pred[, confidence,
        nll])} (confidence/nll: per-sample floats or None); extras = {cell_id: {name: count}} are summed over chunks
        into the cell's aggregate (e.g. zero_grad)."""
        extras = extras or {}
        with self.transaction():
            for i, (cell_id, cols) in enumerate(results.items()):
                samples, correct, pred = cols[:3]
                conf, nll = (list(cols[3:5]) + [None, None])[:2]
                conf, nll = (v if v is not None and len(v) == len(samples) else [None] * len(samples)
                             for v in (conf, nll))
                self.db.execute("DELETE FROM outcomes WHERE cell_id=? AND sample IN (%s)"
                                % ",".join("?" * len(samples)), (cell_id, *map(int, samples)))
                self.db.executemany("INSERT INTO outcomes (cell_id, sample, correct, pred, confidence, nll) "
                                    "VALUES (?,?,?,?,?,?)",
                                    [(cell_id, int(s), int(c), int(p), _opt(q), _opt(n))
                                     for s, c, p, q, n in zip(samples, correct, pred, conf, nll)])
                self.db.execute("INSERT OR REPLACE INTO chunks VALUES (?,?,?,?,?,?)",
                                (cell_id, chunk, len(samples), skipped, run_id, json.dumps(extras.get(cell_id, {}))))
                if _fault is not None:
                    _fault(i)

    def finish_cell(self, cell_id: int, extra: dict | None = None, allow_empty: bool = False) -> bool:
        """Mark the cell done and write its aggregate if all its chunks are committed. Returns whether it is done."""
        n_chunks = self.db.execute("SELECT n_chunks FROM cells WHERE cell_id=?", (cell_id,)).fetchone()[0]
        have, skipped = self.db.execute("SELECT COUNT(*), COALESCE(SUM(skipped),0) FROM chunks WHERE cell_id=?",
                                        (cell_id,)).fetchone()
        if have < n_chunks:
            return False
        n, k = self.db.execute("SELECT COUNT(*), COALESCE(SUM(correct),0) FROM outcomes WHERE cell_id=?",
                               (cell_id,)).fetchone()
        if n == 0 and not allow_empty:
            return False  # every sample unreadable: never a finished cell without outcomes
        extra = dict(extra or {})
        for (ej,) in self.db.execute("SELECT extra_json FROM chunks WHERE cell_id=?", (cell_id,)):
            for key, v in json.loads(ej or "{}").items():
                extra[key] = extra.get(key, 0) + v
        lo, hi = wilson(k, n)
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO aggregates VALUES (?,?,?,?,?,?,?,?)",
                            (cell_id, n, k, k / n if n else None, lo, hi, skipped, json.dumps(extra)))
            self.db.execute("UPDATE cells SET status='done' WHERE cell_id=?", (cell_id,))
        return True

    def reset_cell(self, cell_id: int):
        """--force: forget everything recorded for this cell."""
        with self.transaction():
            for table in ("outcomes", "chunks", "aggregates", "diagnostics"):
                self.db.execute(f"DELETE FROM {table} WHERE cell_id=?", (cell_id,))
            self.db.execute("UPDATE cells SET status='pending' WHERE cell_id=?", (cell_id,))

    def write_flags(self, model_id: int, flags: list[dict], run_id: int):
        with self.transaction():
            self.db.execute("DELETE FROM flags WHERE model_id=?", (model_id,))
            self.db.executemany("INSERT INTO flags (model_id, flag, message, cells_json, run_id) VALUES (?,?,?,?,?)",
                                [(model_id, f["flag"], f["message"], json.dumps(f.get("cells", [])), run_id)
                                 for f in flags])

    def add_flags(self, model_id: int, flags: list[dict], run_id: int, kinds=("random-init",)):
        """Replace the model's flags of these kinds (model-level flags, kept apart from the sanity flags)."""
        with self.transaction():
            self.db.execute("DELETE FROM flags WHERE model_id=? AND flag IN (%s)" % ",".join("?" * len(kinds)),
                            (model_id, *kinds))
            self.db.executemany("INSERT INTO flags (model_id, flag, message, cells_json, run_id) VALUES (?,?,?,?,?)",
                                [(model_id, f["flag"], f["message"], "[]", run_id) for f in flags])

    def write_diagnostics(self, cell_id: int, rows: pd.DataFrame):
        with self.transaction():
            self.db.execute("DELETE FROM diagnostics WHERE cell_id=?", (cell_id,))
            self.db.executemany("INSERT INTO diagnostics VALUES (?,?,?,?,?)",
                                [(cell_id, int(r.layer), int(r.head), str(r.stat), float(r.value))
                                 for r in rows.itertuples()])

    def put_sample_ids(self, data_fingerprint: str, ids, labels=None):
        """Record the identity (relative file path, or dataset index) and optionally the label of each evaluated
        sample of one data selection, by position (the `sample` of outcomes). Idempotent: rewriting the same
        fingerprint replaces its rows."""
        ids = [str(i) for i in ids]
        labels = [None] * len(ids) if labels is None else [None if v is None else int(v) for v in labels]
        if len(labels) != len(ids):
            raise RobenchError(f"{len(labels)} labels for {len(ids)} sample ids")
        with self.transaction():
            self.db.execute("DELETE FROM sample_ids WHERE data_fingerprint=?", (str(data_fingerprint),))
            self.db.executemany("INSERT INTO sample_ids VALUES (?,?,?,?)",
                                [(str(data_fingerprint), i, sid, lab) for i, (sid, lab) in enumerate(zip(ids, labels))])

    # ---- reading ------------------------------------------------------------------------------------------------
    def query(self, sql: str, params=()) -> pd.DataFrame:  # readers: robench.report, robench.run.export
        return self._read(lambda: pd.read_sql_query(sql, self.db, params=params))

    def results(self) -> pd.DataFrame:
        """The tidy long table: one row per model x done cell (columns EXPORT_COLUMNS; value = accuracy in [0,1])."""
        df = self.query("""
            SELECT c.run_id, m.label AS model, m.name AS model_name, m.variant, m.arch, m.params,
                   m.checkpoint_sha256, c.dataset, a.n, c.threat, c.attack, c.norm, c.eps, c.corruption, c.severity,
                   c.category, a.value, a.ci_low, a.ci_high, c.protocol, c.adaptive, c.cell_id, a.extra_json,
                   COALESCE(a.skipped, 0) AS skipped, r.started AS run_started
            FROM cells c JOIN models m USING(model_id) JOIN aggregates a USING(cell_id)
            LEFT JOIN runs r ON r.run_id = c.run_id
            WHERE c.status='done' AND c.threat != 'diagnostics' ORDER BY m.model_id, c.cell_id""")
        df["metric"] = df["threat"].map({"attack": "robust_accuracy"}).fillna("accuracy")
        df["evaluated"] = pd.to_datetime(df["run_started"], unit="s", utc=True).dt.strftime("%Y-%m-%d %H:%M")
        return df[EXPORT_COLUMNS]

    def outcomes(self, cell_id: int) -> pd.DataFrame:
        """Per-sample outcomes of a cell: columns sample, correct, pred, confidence, nll (sorted by sample;
        confidence/nll NaN where not recorded, e.g. a store written before they were)."""
        return self.query(f"SELECT sample, correct, pred, {self.outcome_extras_sql()} FROM outcomes WHERE cell_id=? "
                        "ORDER BY sample", (cell_id,))

    def outcome_extras_sql(self, alias: str = "") -> str:
        """SELECT terms for outcomes' confidence and nll: the columns, or NULLs for a store without them."""
        have = {r[1] for r in self._read(lambda: self.db.execute("PRAGMA table_info(outcomes)").fetchall())}
        return ", ".join(f"{alias}{c} AS {c}" if c in have else f"NULL AS {c}" for c in OUTCOME_EXTRAS)

    def extras(self) -> pd.DataFrame:
        """Per done cell the counters summed over its chunks (extra_json: attacked, zero_grad, rejected_hits, ...)."""
        return self.query("SELECT a.cell_id, a.extra_json FROM aggregates a JOIN cells c USING(cell_id) "
                        "WHERE c.status='done' ORDER BY a.cell_id")

    def cell_extras(self, cell_ids) -> dict[int, dict]:
        """{cell_id: its summed counters (the aggregate's extra_json, parsed; {} when none)} for the given cells."""
        ids = [int(c) for c in cell_ids]
        rows = self._read(lambda: self.db.execute("SELECT cell_id, extra_json FROM aggregates WHERE cell_id IN (%s)"
                                                  % ",".join("?" * len(ids)), ids).fetchall())
        return {cid: json.loads(ej or "{}") for cid, ej in rows}

    def cells(self) -> pd.DataFrame:
        return self.query("SELECT c.*, m.label AS model FROM cells c JOIN models m USING(model_id) ORDER BY cell_id")

    def models(self) -> pd.DataFrame:
        return self.query("SELECT * FROM models ORDER BY model_id")

    def runs(self) -> pd.DataFrame:
        """Every run; read-only, a run still 'running' whose process is gone shows as 'interrupted'."""
        df = self.query("SELECT * FROM runs ORDER BY run_id")
        if self.readonly and len(df) and "pid" in df:
            dead = [s == "running" and h == platform.node() and not pd.isna(p) and not _pid_alive(int(p))
                    for s, h, p in zip(df["status"], df["host"], df["pid"])]
            df.loc[dead, "status"] = "interrupted"
        return df

    def has_table(self, name: str) -> bool:
        return bool(self._read(lambda: self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                                                       (name,)).fetchall()))

    def flags(self) -> pd.DataFrame:
        return self.query("SELECT m.label AS model, f.flag, f.message, f.cells_json, m.checkpoint_sha256 FROM flags f "
                        "JOIN models m USING(model_id) ORDER BY f.flag_id")

    def diagnostics(self) -> pd.DataFrame:
        return self.query("""SELECT m.label AS model, m.variant, c.dataset, c.corruption, c.attack, d.layer, d.head,
                           d.stat, d.value FROM diagnostics d JOIN cells c USING(cell_id) JOIN models m
                           USING(model_id) ORDER BY c.cell_id, d.layer, d.head""")


def _file_stamp(path: Path) -> tuple:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _opt(v):
    return None if v is None or v != v else float(v)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True
