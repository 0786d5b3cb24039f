"""Read commands open a store read-only (issue 21): no store file changes a byte, nothing appears beside it, a
foreign SQLite database stays as it was after every command, and a writer refuses a database that is not robench's."""

import hashlib
import sqlite3
from pathlib import Path

import pytest

from robench.errors import RobenchError
from robench.report.testing import attack, clean, corruption, synthetic_store
from robench.run.store import Store


def _files(root: Path) -> dict:
    """Every file under root with the sha256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _two_models(path: Path) -> Path:
    cells = [(clean(), 0.9), (corruption("gaussian_noise", 1), 0.7), (attack("pgd", 4 / 255), 0.3)]
    s = synthetic_store(path, {"a": {"cells": cells}, "b": {"variant": "quest", "cells": [(c, v - 0.05)
                                                                                         for c, v in cells]}})
    s.close()
    return path


READ_COMMANDS = [
    ["leaderboard", "{s}"],
    ["leaderboard", "{s}", "--format", "json"],
    ["report", "{s}", "--out", "{t}/rep"],
    ["export", "{s}", "--out", "{t}/x.csv"],
    ["export", "{s}", "--per-sample", "--out", "{t}/x.jsonl"],
    ["check", "--baseline", "{s}", "--store", "{s}"],
    ["compare", "a", "b", "--store", "{s}"],
]


def test_no_read_command_changes_a_store(tmp_path, run_cli):
    store = _two_models(tmp_path / "s")
    before = _files(store)
    assert list(before) == ["robench.sqlite"]
    for args in READ_COMMANDS:
        code, out, err = run_cli(*[a.format(s=store, t=tmp_path) for a in args])
        assert code == 0, (args, err)
        assert _files(store) == before, args  # same bytes, and no -wal / -shm / journal left beside it
    db = sqlite3.connect(store / "robench.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # left as the writer set it
    db.close()


def test_a_foreign_database_is_unchanged_after_every_command(tmp_path, run_cli):
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE people (name TEXT)")
    db.execute("INSERT INTO people VALUES ('ada')")
    db.commit()
    db.close()
    store = _two_models(tmp_path / "s")
    before = _files(tmp_path)
    for args in [["leaderboard", "{f}"], ["report", "{f}"], ["export", "{f}", "--out", "{t}/x.csv"],
                 ["export", "{f}", "--per-sample", "--out", "{t}/x.csv"], ["check", "--baseline", "{f}", "--store", "{s}"],
                 ["check", "--baseline", "{s}", "--store", "{f}"], ["compare", "a", "b", "--store", "{f}"],
                 ["eval", "-m", "demo-quest", "-d", "digits", "--limit", "4", "--out", "{f}"]]:
        code, out, err = run_cli(*[a.format(f=foreign, s=store, t=tmp_path) for a in args])
        assert code == 2, (args, out, err)
        assert err.strip() == f"robench: error: not a robench store: {foreign} (no robench tables)", args
        assert _files(tmp_path) == before, args


def test_writer_refuses_a_foreign_database_but_fills_an_empty_file(tmp_path):
    foreign = tmp_path / "f.sqlite"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE t (x)")
    db.close()
    data = foreign.read_bytes()
    with pytest.raises(RobenchError, match="not a robench store"):
        Store(foreign, create=True)
    assert foreign.read_bytes() == data
    empty = tmp_path / "e.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(RobenchError, match="not a robench store"):
        Store(empty, readonly=True)  # a reader never turns it into a store
    assert empty.read_bytes() == b""
    s = Store(empty, create=True)  # an empty database is where a writer may create the schema
    assert s.results().empty
    s.close()


def test_read_only_store_cannot_be_written_and_shows_dead_runs_as_interrupted(tmp_path):
    s = Store(tmp_path / "s", create=True)
    run = s.start_run(seed=0, host=__import__("platform").node(), pid=2 ** 22 + 12345)  # no such process
    s.db.execute("UPDATE runs SET pid=? WHERE run_id=?", (2 ** 22 + 12345, run))
    s.close()
    before = _files(tmp_path / "s")
    r = Store(tmp_path / "s", readonly=True)
    assert r.runs()["status"].tolist() == ["interrupted"]
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        r.db.execute("UPDATE runs SET status='done'")
    r.close()
    assert _files(tmp_path / "s") == before
    w = Store(tmp_path / "s", create=True)  # a writer records it
    assert w.db.execute("SELECT status FROM runs").fetchone()[0] == "interrupted"
    w.close()


def test_reader_sees_a_running_writer_through_its_wal(tmp_path):
    """While a writer holds the store open (its -wal file exists) a reader reads through the WAL: it sees the
    writer's committed rows."""
    w = Store(tmp_path / "s", create=True)
    w.start_run(seed=0)
    w.start_run(seed=1)
    assert Path(f"{w.path}-wal").exists()
    r = Store(tmp_path / "s", readonly=True)
    assert len(r.runs()) == 2
    r.close()
    w.close()


def test_a_reader_opened_before_a_run_reads_the_store_again_once_it_changed(tmp_path):
    """A store without a -wal file is read as immutable (nothing appears beside it). When a run then writes to it
    and checkpoints, the reader must not answer from the file it opened (stale, or torn mid-checkpoint): it opens
    the store again. Before, the second read still showed two models."""
    path = _two_models(tmp_path / "s")
    reader = Store(path, readonly=True)
    assert reader.models().label.tolist() == ["a", "b"]
    writer = Store(path)
    writer.model_id(label="c", name="c", variant="quest", arch="toy", params=1, checkpoint=None,
                    checkpoint_sha256="c" * 64)
    writer.close()  # the last connection: the WAL is checkpointed into the file and removed
    assert reader.models().label.tolist() == ["a", "b", "c"]
    assert reader.cell_extras([]) == {} and reader.has_table("models")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["robench.sqlite"]
    reader.close()
