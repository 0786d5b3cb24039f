"""Safe defaults and clean failures (issue 15): no silent random weights, one validation pass before any work,
unreadable images counted and reported, honest run states, `robench models` without building models."""

import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robench.errors import RobenchError
from robench.run import ModelEntry, Plan, Store, load_plan, run_plan


def _folder(root: Path, n_ok: int, n_bad: int, size: int = 32) -> Path:
    """A folder: dataset for the 10-class demo models: n_ok random PNGs and n_bad garbage JPEGs in class 0."""
    (root / "0").mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    rng = np.random.default_rng(0)
    for i in range(n_ok):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "0" / f"ok{i}.png")
    for i in range(n_bad):
        (root / "0" / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    return root


def _tree(root: Path) -> dict:
    """Every file and directory under root with its size and mtime: 'nothing written' compares two of these."""
    return {str(p.relative_to(root)): (p.is_dir(), 0 if p.is_dir() else p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the bad inputs refer to, and one small finished store."""
    d = tmp_path_factory.mktemp("bad")
    (d / "afile").write_text("I am a regular file\n")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / "photo.jpg")
    _folder(d / "allbad", 0, 2)
    (d / "type.toml").write_text(f'data = "digits"\nlimit = "ten"\nout = "{d / "p1"}"\n'
                                 '[[models]]\nname = "demo-standard"\n')
    (d / "type2.toml").write_text(f'data = "digits"\nout = "{d / "p2"}"\n'
                                  '[[models]]\nname = "demo-standard"\nrandom_init = "yes"\n')
    (d / "type3.toml").write_text(f'data = "digits"\nout = "{d / "p3"}"\nattacks = 3\n'
                                  '[[models]]\nname = "demo-standard"\n')
    from safetensors.torch import save_file

    from robench.zoo.registry import create_model

    save_file(create_model("demo-standard").net.state_dict(), str(d / "one.safetensors"))
    (d / "existing.safetensors").write_bytes(b"precious")
    run_plan(Plan(models=[ModelEntry("demo-standard")], data="digits", limit=8, out=str(d / "store"), quiet=True))
    import gc
    import sqlite3

    gc.collect()  # close the run's connection now, not in the middle of a case (closing checkpoints the WAL)
    db = sqlite3.connect(d / "store" / "robench.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    _hostile_stores(d)
    return d


def _hostile_stores(d: Path) -> None:
    """Stores and baselines the read commands must refuse: a foreign SQLite database, a 0-byte file, a store
    without its aggregates table, baseline CSVs with n = 0, a NaN value, an infinite n."""
    import shutil
    import sqlite3

    db = sqlite3.connect(d / "foreign.db")
    db.execute("CREATE TABLE people (name TEXT)")
    db.execute("INSERT INTO people VALUES ('ada')")
    db.commit()
    db.close()
    (d / "empty.sqlite").write_bytes(b"")
    (d / "noagg").mkdir()
    shutil.copy(d / "store" / "robench.sqlite", d / "noagg" / "robench.sqlite")
    db = sqlite3.connect(d / "noagg" / "robench.sqlite")
    db.execute("DROP TABLE aggregates")
    db.commit()
    db.execute("PRAGMA journal_mode=DELETE")  # a plain file, like the others: reading it creates nothing beside it
    db.close()
    base = Store(d / "store", readonly=True).results()
    base.to_csv(d / "base.csv", index=False)
    for name, col, value in (("base_n0", "n", 0), ("base_nan", "value", float("nan")), ("base_inf", "n", "inf")):
        bad = base.copy()
        bad[col] = bad[col].astype(object)
        bad.loc[0, col] = value
        bad.to_csv(d / f"{name}.csv", index=False)


# (arguments, message regex); every case: exit 2, one line on stderr, no traceback, nothing written anywhere
BAD_INPUTS = [
    # 1. random weights only on purpose
    (["eval", "-m", "deit-quest", "-d", "digits", "--attack", "fgsm", "--out", "{d}/r1"],
     r"model deit-quest has no weights: .*--random-init"),
    (["inspect", "-m", "deit-quest"], r"has no weights.*--random-init"),
    # 2. a dataset whose images are all unreadable
    (["eval", "-m", "demo-quest", "-d", "folder:{d}/allbad", "--out", "{d}/r2"], r"no readable image in folder:"),
    # 3. tracebacks on ordinary mistakes: plan value types, output paths under a regular file
    (["sweep", "{d}/type.toml"], r"plan .*type.toml: `limit` must be an integer, got 'ten' \(str\)"),
    (["sweep", "{d}/type2.toml"], r"model 1 \(demo-standard\): `random_init` must be true or false, got 'yes'"),
    (["sweep", "{d}/type3.toml"], r"`attacks` must be a list of strings, got 3"),
    (["export", "{d}/store", "--out", "{d}/afile/x.csv"], r"afile is a file, not a directory"),
    (["corrupt", "{d}/photo.jpg", "--out", "{d}/afile/sub"], r"afile is a file, not a directory"),
    (["eval", "-m", "demo-quest", "-d", "digits", "--out", "{d}/afile"], r"afile is a file, not a directory"),
    (["leaderboard", "{d}/store", "--out", "{d}/afile/lb.md"], r"afile is a file"),
    (["report", "{d}/store", "--out", "{d}/afile/rep"], r"afile is a file"),
    (["check", "--baseline", "{d}/store", "--store", "{d}/store", "--summary", "{d}/afile/s.md"], r"afile is a file"),
    (["toy", "--out", "{d}/afile/toy"], r"afile is a file"),
    (["demo", "--out", "{d}/afile/demo"], r"afile is a file"),
    (["inspect", "-m", "demo-quest", "--csv", "{d}/afile/d.csv"], r"afile is a file"),
    # 4. the output is checked before the work
    (["corrupt", "{d}/photo.jpg", "--out", "{d}/cout", "--grid", "{d}/afile/g.png"], r"grid image .*afile is a file"),
    # 5. nonsense accepted silently
    (["eval", "-m", "demo-quest", "-d", "digits", "-a", "fgsm", "--eps", "300/255", "--out", "{d}/r4"],
     r"Linf eps 300/255 .* larger than 1 .*--allow-large-eps"),
    (["eval", "-m", "demo-quest", "-d", "digits", "-a", "pgd-l2", "--eps", "56", "--out", "{d}/r5"],
     r"L2 eps 56 .* larger than 55.43, the diameter of a 3x32x32 image"),
    (["eval", "-m", "demo-quest", "-m", "demo-standard", "-c", "{d}/one.safetensors", "-d", "digits",
      "--out", "{d}/r6"], r"1 --checkpoint for 2 --model"),
    (["eval", "-m", "demo-quest", "-c", "{d}/nope.safetensors", "-d", "digits", "--out", "{d}/r7"],
     r"checkpoint not found"),
    (["convert", "{d}/one.safetensors", "{d}/existing.safetensors"], r"already exists \(use --force"),
    (["export", "{d}/store", "--out", "{d}/x.xlsx"], r"cannot tell the export format of .*x.xlsx"),
    (["export", "{d}/store", "--out", "{d}/x.csv", "--format", "jsonl"], r"--format jsonl does not match"),
    (["models", "--variant", "qest"], r"unknown variant 'qest' \(did you mean: quest"),
    # ---- issue 21, read/report/CLI side (a separate block: other rows go after it) ------------------------------
    # statistics arguments
    (["check", "--baseline", "{d}/base.csv", "--store", "{d}/store", "--tolerance", "nan"],
     r"--tolerance must be a finite number >= 0"),
    (["check", "--baseline", "{d}/base.csv", "--store", "{d}/store", "--tolerance", "inf"],
     r"--tolerance must be a finite number >= 0"),
    (["check", "--baseline", "{d}/base.csv", "--store", "{d}/store", "--tolerance", "-1"],
     r"--tolerance must be a finite number >= 0"),
    (["check", "--baseline", "{d}/base.csv", "--store", "{d}/store", "--alpha", "nan"], r"--alpha must be in \(0, 1\)"),
    (["check", "--baseline", "{d}/base_n0.csv", "--store", "{d}/store"], r"base_n0.csv row 2 .*n must be a whole number >= 1"),
    (["check", "--baseline", "{d}/base_nan.csv", "--store", "{d}/store"], r"base_nan.csv row 2 .*value must be an accuracy"),
    (["check", "--baseline", "{d}/base_inf.csv", "--store", "{d}/store"], r"base_inf.csv row 2 .*n must be a whole number"),
    (["compare", "demo-standard", "demo-standard", "--store", "{d}/store", "--alpha", "5"], r"--alpha must be in \(0, 1\)"),
    # stores that are not robench's, for every command that reads one (and eval writing into one)
    *[(args, r"not a robench store: .*foreign.db \(no robench tables\)") for args in (
        ["leaderboard", "{d}/foreign.db"], ["report", "{d}/foreign.db"], ["export", "{d}/foreign.db", "--out", "{d}/f.csv"],
        ["export", "{d}/foreign.db", "--per-sample", "--out", "{d}/f.csv"],
        ["check", "--baseline", "{d}/foreign.db", "--store", "{d}/store"],
        ["check", "--baseline", "{d}/store", "--store", "{d}/foreign.db"],
        ["compare", "a", "b", "--store", "{d}/foreign.db"], ["compare", "a@{d}/foreign.db", "b@{d}/store"],
        ["eval", "-m", "demo-quest", "-d", "digits", "--limit", "8", "--out", "{d}/foreign.db"])],
    *[(args, r"not a robench store: .*empty.sqlite") for args in (
        ["leaderboard", "{d}/empty.sqlite"], ["report", "{d}/empty.sqlite"],
        ["export", "{d}/empty.sqlite", "--out", "{d}/e.csv"], ["check", "--baseline", "{d}/empty.sqlite", "--store", "{d}/store"],
        ["compare", "a", "b", "--store", "{d}/empty.sqlite"])],
    *[(args, r"not a robench store: .*noagg.*missing aggregates") for args in (
        ["leaderboard", "{d}/noagg"], ["report", "{d}/noagg"], ["export", "{d}/noagg", "--out", "{d}/n.csv"],
        ["check", "--baseline", "{d}/noagg", "--store", "{d}/store"], ["check", "--baseline", "{d}/base.csv", "--store", "{d}/noagg"],
        ["compare", "a", "b", "--store", "{d}/noagg"],
        ["eval", "-m", "demo-quest", "-d", "digits", "--limit", "8", "--out", "{d}/noagg"])],
    # outputs the OS refuses although os.access may say yes (as root under /proc): checked by writing a probe
    (["export", "{d}/store", "--out", "/proc/robench-test/x.csv"], r"export file .* not writable"),
    (["export", "{d}/store", "--per-sample", "--out", "/proc/x.jsonl"], r"export file .* not writable"),
    (["leaderboard", "{d}/store", "--out", "/proc/lb.md"], r"leaderboard file .* not writable"),
    (["report", "{d}/store", "--out", "/proc/robench-report"], r"report directory .* not writable"),
    (["corrupt", "{d}/photo.jpg", "--out", "/proc/robench-corrupt"], r"output directory .* not writable"),
    (["corrupt", "{d}/photo.jpg", "--out", "{d}/cout", "--grid", "/proc/g.png"], r"grid image .* not writable"),
    (["check", "--baseline", "{d}/store", "--store", "{d}/store", "--summary", "/proc/s.md"], r"summary file .* not writable"),
    (["inspect", "-m", "demo-quest", "--csv", "/proc/d.csv"], r"CSV file .* not writable"),
    (["convert", "{d}/one.safetensors", "/proc/one.safetensors"], r"output checkpoint .* not writable"),
    (["toy", "--out", "/proc/robench-toy"], r"output directory .* not writable"),
    # validated before any output exists
    (["toy", "--variants", "bogus", "--out", "{d}/toyout"], r"unknown attention variant 'bogus'"),
    (["toy", "--seeds", "0", "--out", "{d}/toyout"], r"need --seeds >= 1"),
    (["toy", "--lrs", "-1", "--out", "{d}/toyout"], r"--lrs must be finite numbers > 0"),
    (["inspect", "-m", "demo-quest", "--max-tokens", "0"], r"--max-tokens must be >= 1"),
    (["inspect", "-m", "demo-quest", "--batch-size", "0"], r"--batch-size must be >= 1"),
    (["inspect", "-m", "demo-quest", "--limit", "0"], r"--limit must be >= 1"),
    (["export", "{d}/store", "--per-sample", "--diagnostics", "--out", "{d}/ps.csv"], r"two different tables"),
    (["export", "{d}/store", "--diagnostics", "--out", "{d}/diag.csv"], r"nothing to export: .* no diagnostics rows"),
    # ---- end of the issue-21 read/report/CLI block ------------------------------------------------------------
]


@pytest.mark.parametrize("args,msg", BAD_INPUTS, ids=[" ".join(a[:3]) for a, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2_nothing_written(world, run_cli, args, msg):
    before = _tree(world)
    code, out, err = run_cli(*[a.format(d=world) for a in args])
    assert code == 2, (args, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("robench: error: "), err
    assert "Traceback" not in err + out
    assert re.search(msg, lines[0]), (msg, lines[0])
    assert _tree(world) == before  # no store, no half-written file, no directory


def test_every_rerun_of_an_unreadable_dataset_fails_the_same(world, run_cli):
    for _ in range(2):
        code, _, err = run_cli("eval", "-m", "demo-quest", "-d", f"folder:{world}/allbad", "--out", world / "again")
        assert code == 2 and "no readable image" in err and not (world / "again").exists()


# ---- 1. random weights only on purpose ---------------------------------------------------------------------------
def test_random_init_runs_when_asked_and_is_flagged_everywhere(tmp_path, run_cli):
    out = tmp_path / "r"
    code, text, err = run_cli("eval", "-m", "demo-quest", "--random-init", "-d", "digits", "--limit", "40",
                              "--label", "rnd", "--out", out)
    assert code == 0, err
    assert "RANDOM-INIT" in text and "RANDOM weights" in text + err
    s = Store(out)
    assert s.models().checkpoint_sha256.tolist() == ["random-init-seed0"]
    assert "random-init" in set(s.flags().flag)
    from robench.report.leaderboard import format_leaderboard, leaderboard

    lb = leaderboard([out])
    assert lb.set_index("model").loc["rnd", "flags"] >= 1
    assert "RANDOM weights" in format_leaderboard(lb, "md")
    from robench.report.render import report

    html = Path(report([out], tmp_path / "rep")).read_text()
    assert "random-init" in html
    # --random-init really drops the shipped weights: chance level, far below the trained model
    acc = s.results().value.iloc[0]
    assert acc < 0.5


def test_random_init_per_model_in_a_plan(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text(f'data = "digits"\nlimit = 16\nout = "{tmp_path / "o"}"\n'
                 '[[models]]\nname = "deit-tiny-quest"\nrandom_init = true\nlabel = "r"\n')
    plan = load_plan(p)
    assert plan.models[0].random_init is True
    from robench.run.resolve import resolve as preflight

    preflight(plan)  # accepted (a 1000-class model on digits then fails on classes, not on weights)
    p.write_text(p.read_text().replace("random_init = true\n", ""))
    with pytest.raises(RobenchError, match="has no weights"):
        preflight(load_plan(p))


def test_checkpoints_pair_by_count_or_by_name(tmp_path):
    from robench.run.resolve import model_entries

    e = model_entries(["a", "b"], ["x.pth", "y.pth"], ["A"])
    assert [(m.name, m.checkpoint, m.label) for m in e] == [("a", "x.pth", "A"), ("b", "y.pth", None)]
    e = model_entries(["a", "b"], ["b=y.pth"], config={"checkpoints": {"a": "cfg.pth"}})
    assert [m.checkpoint for m in e] == ["cfg.pth", "y.pth"]
    for bad, msg in ((["one.pth"], "1 --checkpoint for 2 --model"),
                     (["a=x.pth", "y.pth"], "mix of"),
                     (["a=x.pth", "a=y.pth"], "two checkpoints for model 'a'")):
        with pytest.raises(RobenchError, match=msg):
            model_entries(["a", "b"], bad)
    assert model_entries(["a"], [], random_init=True)[0].random_init
    assert not model_entries(["a"], ["x.pth"], random_init=True)[0].random_init  # a checkpoint wins


# ---- 2./3. typed plan values ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("line,msg", [
    ("batch_size = 1.5", r"`batch_size` must be an integer, got 1.5"),
    ("severities = [\"a\"]", r"`severities` must be a list of integers"),
    ("device = 0", r"`device` must be a string, got 0"),
    ("force = 1", r"`force` must be true or false, got 1"),
    ("data = 5", r"`data` must be a string"),
])
def test_plan_values_are_typed(tmp_path, line, msg):
    p = tmp_path / "p.toml"
    p.write_text(f'data = "digits"\n{line}\n[[models]]\nname = "demo-quest"\n'.replace('data = "digits"\ndata', "data"))
    with pytest.raises(RobenchError, match=msg):
        load_plan(p)


def test_a_well_typed_plan_loads(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('data = "digits"\nlimit = 10\neps = ["2/255", 0.01]\nseverities = [1, 3]\nallow_large_eps = true\n'
                 '[[models]]\nname = "demo-quest"\nnum_classes = 10\n')
    plan = load_plan(p)
    assert plan.limit == 10 and plan.eps == pytest.approx([2 / 255, 0.01]) and plan.allow_large_eps


# ---- 5. eps range --------------------------------------------------------------------------------------------------
def test_eps_limits_and_allow_large_eps(tmp_path):
    from robench.run.checks import check_eps, eps_limit
    from robench.zoo.registry import model_info

    info = model_info("demo-quest")
    assert eps_limit("Linf", (3, 32, 32)) == 1.0
    assert eps_limit("L2", (3, 32, 32)) == pytest.approx(math.sqrt(3 * 32 * 32))
    ok = Plan(models=[ModelEntry("demo-quest")], data="digits", attacks=["pgd-l2"], eps=[55.0])
    check_eps(ok, [info])
    big = Plan(models=[ModelEntry("demo-quest")], data="digits", attacks=["fgsm"], eps=[1.2])
    with pytest.raises(RobenchError, match="larger than 1"):
        check_eps(big, [info])
    big.allow_large_eps = True
    check_eps(big, [info])
    # asked for explicitly, it runs and is stored as it is
    res = run_plan(Plan(models=[ModelEntry("demo-quest")], data="digits", limit=8, attacks=["fgsm"], eps=[1.2],
                        allow_large_eps=True, sanity_probe=False, out=str(tmp_path / "o"), quiet=True))
    att = res[res.threat == "attack"]
    assert att.eps.tolist() == [pytest.approx(1.2)]


def test_the_demo_probe_eps_is_within_range():
    from robench.attack.sanity import LARGE_EPS
    from robench.run.checks import eps_limit

    assert LARGE_EPS["Linf"] <= eps_limit("Linf", (3, 32, 32))
    assert LARGE_EPS["L2"] <= eps_limit("L2", (3, 32, 32))


# ---- unreadable images ---------------------------------------------------------------------------------------------
def test_unreadable_images_counted_stored_and_reported_once(tmp_path, capfd):
    data = _folder(tmp_path / "d", 5, 2)
    out = tmp_path / "o"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no raw Python warning, in this process or a DataLoader worker
        res = run_plan(Plan(models=[ModelEntry("demo-quest"), ModelEntry("demo-standard")], data=f"folder:{data}",
                            corruptions=["cifar10-c"], corruption_names=["fog"], severities=[1], workers=2,
                            batch_size=2, out=str(out), quiet=True))
    err = capfd.readouterr().err
    assert err.count("skipping unreadable images") == 1 and "bad0.jpg" in err
    assert "UserWarning" not in err
    assert (res.n == 5).all() and (res.skipped == 2).all()
    s = Store(out)
    assert s.runs().skipped.tolist() == [2]  # distinct images, not once per model or cell
    from robench.report.leaderboard import format_leaderboard, leaderboard

    lb = leaderboard([out])
    assert lb.skipped.tolist() == [2, 2]
    assert "2 unreadable image(s) skipped" in format_leaderboard(lb, "md")
    from robench.run import summarize, summary_notes

    assert any("2 unreadable image(s) skipped" in n for n in summary_notes(summarize(res)))


def test_no_skipped_column_when_nothing_was_skipped(world):
    from robench.report.leaderboard import leaderboard

    assert "skipped" not in leaderboard([world / "store"]).columns


def test_a_cell_is_never_done_without_outcomes(tmp_path):
    s = Store(tmp_path, create=True)
    run = s.start_run(host="h")
    mid = s.model_id(label="m", name="m", variant="v", arch="a", params=1, checkpoint="", checkpoint_sha256="x")
    cid = s.cell_id(mid, {"threat": "clean"}, 4, 1, run)
    s.write_chunk(0, {cid: ([], [], [])}, run, skipped=4)
    assert s.finish_cell(cid) is False and s.cell_status(cid) == "pending"
    assert s.results().empty


# ---- 6. run states -------------------------------------------------------------------------------------------------
def test_killed_run_reads_as_interrupted(tmp_path):
    import platform

    s = Store(tmp_path, create=True)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a process that existed and is gone (as after kill -9)
    dead = s.start_run(host=platform.node(), pid=p.pid)
    alive = s.start_run(host=platform.node())  # this process
    elsewhere = s.start_run(host="another-host", pid=p.pid)  # cannot be checked from here: left as it is
    s.close()
    runs = Store(tmp_path).runs().set_index("run_id").status
    assert (runs[dead], runs[alive], runs[elsewhere]) == ("interrupted", "running", "running")


def _robench(*args, env=None):
    return subprocess.run([sys.executable, "-m", "robench", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_double_ctrl_c_prints_the_resume_hint_and_marks_interrupted(tmp_path):
    out = tmp_path / "o"
    args = ("eval", "-m", "demo-quest", "-d", "digits:all", "--limit", "600", "--out", out, "-q")
    r = _robench(*args, env={"ROBENCH_FAULT": "sigint2@2"})  # two SIGINTs inside the 2nd chunk transaction
    assert r.returncode == 130, r.stderr[-800:]
    assert "rerun the same command to resume" in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    s = Store(out)
    assert s.runs().status.tolist() == ["interrupted"]
    assert s.db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0] == 256  # the first chunk is kept
    r = _robench(*args)
    assert r.returncode == 0, r.stderr[-800:]
    assert Store(out).runs().status.tolist() == ["interrupted", "done"]


def test_two_evaluations_of_one_label_are_told_apart(tmp_path, run_cli):
    from safetensors.torch import save_file

    from robench.zoo.registry import create_model

    ck = tmp_path / "w.safetensors"
    net = create_model("demo-quest").net
    save_file(net.state_dict(), str(ck))
    out = tmp_path / "o"
    code, first, err = run_cli("eval", "-m", "demo-quest", "-c", ck, "-d", "digits", "--limit", "16", "--out", out)
    assert code == 0, err
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["head.bias"] += 1.0
    save_file(sd, str(ck))  # the checkpoint at the same path changes
    code, second, err = run_cli("eval", "-m", "demo-quest", "-c", ck, "-d", "digits", "--limit", "16", "--out", out)
    assert code == 0, err
    shas = Store(out).models().checkpoint_sha256.tolist()
    assert len(shas) == 2
    assert shas[1][:8] in second and shas[0][:8] not in second  # this run's evaluation, named by its weights
    assert second.count("clean") == 1
    from robench.report.leaderboard import leaderboard

    assert sorted(leaderboard([out]).model) == ["demo-quest", f"demo-quest#{shas[0][:8]}"]
    res = Store(out).results()
    assert res.evaluated.str.match(r"\d{4}-\d\d-\d\d \d\d:\d\d").all()


# ---- 7. models, convert, export, demo columns ----------------------------------------------------------------------
def test_models_catalog_equals_the_registry():
    """The static catalog (no model built) lists exactly what the registry builds, parameter counts included."""
    from robench.zoo.catalog import catalog
    from robench.zoo.registry import list_models

    runtime = {"source", "checkpoint", "checkpoint_sha256", "provenance"}  # filled when a model is built
    expected = json.loads(json.dumps([{k: v for k, v in i.to_dict().items() if k not in runtime}
                                      for i in list_models()]))  # counted on the meta device
    assert json.loads(json.dumps(catalog())) == expected


def test_models_command_imports_neither_torch_nor_timm():
    code = ("import sys\nfrom robench.cli import main\ntry:\n    main(['models', '--json'])\nexcept SystemExit:\n"
            "    pass\nprint('HEAVY', sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "HEAVY []"
    rows = json.loads(r.stdout[:r.stdout.rindex("HEAVY")])
    assert len(rows) == 6 * 8 + 8


def test_convert_overwrites_only_with_force(world, tmp_path, run_cli):
    dst = tmp_path / "c.safetensors"
    dst.write_bytes(b"old")
    code, _, err = run_cli("convert", world / "one.safetensors", dst)
    assert code == 2 and dst.read_bytes() == b"old"
    code, _, err = run_cli("convert", world / "one.safetensors", dst, "--force")
    assert code == 0, err
    from robench.zoo.checkpoint import load_state_dict

    state, _ = load_state_dict(dst)
    assert "head.weight" in state


def test_export_format_follows_the_suffix(world, tmp_path, run_cli):
    n = len(Store(world / "store").results())
    for name, read in (("r.csv", pd.read_csv), ("r.json", pd.read_json),
                       ("r.jsonl", lambda p: pd.read_json(p, lines=True))):
        code, _, err = run_cli("export", world / "store", "--out", tmp_path / name)
        assert code == 0, err
        assert len(read(tmp_path / name)) == n
    code, _, err = run_cli("export", world / "store", "--out", tmp_path / "r2.csv", "--format", "csv")
    assert code == 0


def test_demo_leaderboard_has_no_mce_columns(world):
    """mCE needs ImageNet-C's AlexNet errors: on digits the columns are not shown (and the footnote says why)."""
    from robench.report.leaderboard import format_leaderboard, leaderboard

    out = world / "cor"
    run_plan(Plan(models=[ModelEntry("demo-quest")], data="digits", limit=8, corruptions=["cifar10-c"],
                  corruption_names=["fog"], severities=[1], out=str(out), quiet=True))
    lb = leaderboard([out])
    assert "corruptions_acc" in lb.columns
    assert not [c for c in lb.columns if "mce" in c]
    md = format_leaderboard(lb, "md")
    assert "mCE needs ImageNet-C" in md and "mCE and relative mCE in %" not in md


def test_output_paths_checked_without_creating_anything(tmp_path):
    from robench.paths import check_dir, check_file

    check_dir(tmp_path / "a" / "b")
    check_file(tmp_path / "c" / "d.csv")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(RobenchError, match="is a directory"):
        check_file(tmp_path)
    with pytest.raises(RobenchError, match="already exists"):
        check_file(tmp_path / "f", overwrite=False)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(RobenchError, match="not writable"):
            check_dir(ro / "x")


def test_a_failed_first_run_leaves_no_store_and_no_directory(tmp_path, run_cli):
    """A failure after the store was opened (here NaN logits in the first chunk) removes the store this run
    created, and the directories it made, when no outcome was recorded."""
    from safetensors.torch import save_file

    from robench.zoo.registry import create_model

    sd = {k: v.clone() for k, v in create_model("demo-standard").net.state_dict().items()}
    sd["head.bias"][:] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    code, _, err = run_cli("eval", "-m", "demo-standard", "-c", tmp_path / "nan.safetensors", "-d", "digits",
                           "--limit", "8", "--out", tmp_path / "a" / "b", "-q")
    assert code == 2 and "NaN/inf logits" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
