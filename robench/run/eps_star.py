"""Per-sample eps* of minimum-norm attack cells (robench.attack.fmn), in the store's own `eps_star` table:
eps_star(cell_id, sample, eps_star REAL) — the norm of the smallest adversarial found for the sample (0: the clean
input is already misclassified, inf: none found within the attack's budget); the cell's outcomes hold the clean
correctness and the verdict at unbounded eps.

The table is created by the first writer (older stores lack it; readers treat a missing table as empty). The engine
writes a chunk's eps* rows just before the chunk's outcomes transaction: INSERT OR REPLACE is idempotent, so a crash
between the two leaves rows that the recomputed chunk overwrites, never a committed chunk without them.
"""

from __future__ import annotations

import pandas as pd

TABLE = """CREATE TABLE IF NOT EXISTS eps_star (
    cell_id INTEGER, sample INTEGER, eps_star REAL, PRIMARY KEY(cell_id, sample)) WITHOUT ROWID"""


def pop_eps_star(extras: dict) -> dict:
    """Take the per-sample eps* out of a chunk's extras ({cell_id: {"eps_star": {sample: eps*}, counters...}})."""
    return {cid: d.pop("eps_star") for cid, d in extras.items() if isinstance(d.get("eps_star"), dict)}


def write_eps_star(store, values: dict) -> None:
    """values = {cell_id: {sample: eps*}} into the store (one transaction)."""
    if not values:
        return
    with store.transaction():
        store.db.execute(TABLE)
        for cid, vals in values.items():
            store.db.executemany("INSERT OR REPLACE INTO eps_star VALUES (?,?,?)",
                                 [(int(cid), int(k), float(v)) for k, v in vals.items()])


def read_eps_star(store, cell_id: int | None = None) -> pd.DataFrame:
    """Columns cell_id, sample, eps_star (sorted); empty when the store has no eps* (or none for that cell)."""
    if not store.has_table("eps_star"):
        return pd.DataFrame({"cell_id": pd.Series(dtype=int), "sample": pd.Series(dtype=int),
                             "eps_star": pd.Series(dtype=float)})
    where, args = ("", ()) if cell_id is None else (" WHERE cell_id=?", (int(cell_id),))
    return store.query("SELECT cell_id, sample, eps_star FROM eps_star" + where + " ORDER BY cell_id, sample", args)
