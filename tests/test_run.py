"""Sweep engine and results store: determinism, batch-size invariance, resume after kill -9, bad input."""

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from robench.errors import RobenchError
from robench.run import ModelEntry, Plan, Store, load_plan, run_plan

CORR = ["gaussian_noise", "fog"]


def plan(out, **kw):
    base = dict(models=[ModelEntry("demo-standard")], data="digits", limit=48, corruptions=["cifar10-c"],
                corruption_names=CORR, severities=[1, 5], out=str(out), quiet=True, chunk_size=16)
    base.update(kw)
    if not base["corruptions"]:  # --corruption without --corruptions is an error
        base["corruption_names"] = None
    return Plan(**base)


def outcomes(out) -> pd.DataFrame:
    """Every per-sample outcome in a store, keyed by cell parameters (not ids)."""
    db = sqlite3.connect(Path(out) / "robench.sqlite")
    df = pd.read_sql_query("SELECT m.label, c.params_hash, o.sample, o.correct, o.pred FROM outcomes o "
                           "JOIN cells c USING(cell_id) JOIN models m USING(model_id) "
                           "ORDER BY m.label, c.params_hash, o.sample", db)
    db.close()
    return df


def test_clean_and_corruption_cells(tmp_path):
    res = run_plan(plan(tmp_path))
    assert set(res.threat) == {"clean", "corruption"}
    assert len(res) == 1 + len(CORR) * 2
    assert (res.n == 48).all()
    assert res.value.between(0, 1).all() and (res.ci_low <= res.value).all() and (res.value <= res.ci_high).all()
    s = Store(tmp_path)
    for cid in res.cell_id:
        o = s.outcomes(cid)
        assert list(o["sample"]) == list(range(48))
        assert o.correct.mean() == pytest.approx(res.set_index("cell_id").value[cid])
    clean = res[res.threat == "clean"].value.iloc[0]
    noisy = res[(res.corruption == "gaussian_noise") & (res.severity == 5)].value.iloc[0]
    fog5 = res[(res.corruption == "fog") & (res.severity == 5)].value.iloc[0]
    assert min(noisy, fog5) <= clean  # severe corruptions do not help a trained model


def test_batch_size_and_rerun_invariance(tmp_path):
    run_plan(plan(tmp_path / "a", batch_size=7))
    run_plan(plan(tmp_path / "b", batch_size=32))
    a, b = outcomes(tmp_path / "a"), outcomes(tmp_path / "b")
    assert len(a) == 48 * 5
    pd.testing.assert_frame_equal(a, b)
    # rerunning is a no-op (everything done) and changes nothing
    run_plan(plan(tmp_path / "a", batch_size=5))
    pd.testing.assert_frame_equal(outcomes(tmp_path / "a"), b)


def test_changed_parameters_never_reuse_rows(tmp_path):
    run_plan(plan(tmp_path, seed=0))
    n_cells = len(Store(tmp_path).cells())
    run_plan(plan(tmp_path, seed=1))  # corruption noise changes with the seed: new cells
    cells = Store(tmp_path).cells()
    assert len(cells) == 2 * n_cells
    run_plan(plan(tmp_path, seed=1, limit=40))
    assert len(Store(tmp_path).cells()) == 3 * n_cells


def test_force_recomputes(tmp_path):
    run_plan(plan(tmp_path))
    s = Store(tmp_path)
    s.db.execute("UPDATE outcomes SET correct = 1 - correct")  # corrupt the stored rows
    run_plan(plan(tmp_path))  # resume: done cells are not recomputed
    assert Store(tmp_path).results().value.max() > 0
    before = Store(tmp_path).results().set_index("cell_id").value
    run_plan(plan(tmp_path, force=True))
    after = Store(tmp_path).results().set_index("cell_id").value
    assert not np.allclose(before.values, after.values)


def _write_plan(path, out, **extra):
    lines = ['data = "digits"', "limit = 40", "chunk_size = 8", 'corruptions = ["cifar10-c"]',
             'corruption_names = ["gaussian_noise"]', "severities = [3]", f'out = "{out}"',
             '[[models]]\nname = "demo-standard"', '[[models]]\nname = "demo-quest"']
    lines[6:6] = [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _robench(*args, env=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "robench", *map(str, args)], capture_output=True, text=True, env=e,
                          timeout=300)


@pytest.mark.slow
def test_kill9_at_five_points_then_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    run_plan(load_plan(_write_plan(tmp_path / "ref.toml", ref)))
    p = _write_plan(tmp_path / "plan.toml", tmp_path / "crash")
    # 2 models x 5 chunks = 10 chunk transactions; die inside transactions at 5 different points of progress
    for k in (1, 2, 1, 3, 2):
        r = _robench("sweep", p, "-q", env={"ROBENCH_FAULT": f"kill@{k}"})
        assert r.returncode == -9, r.stderr[-500:]
    r = _robench("sweep", p, "-q")
    assert r.returncode == 0, r.stderr[-800:]
    pd.testing.assert_frame_equal(outcomes(ref), outcomes(tmp_path / "crash"))
    a = Store(ref).results().drop(columns=["run_id", "evaluated"])
    b = Store(tmp_path / "crash").results().drop(columns=["run_id", "evaluated"])
    pd.testing.assert_frame_equal(a.drop(columns="cell_id"), b.drop(columns="cell_id"))
    runs = Store(tmp_path / "crash").runs()
    # the killed runs are not left 'running': the next open of the store saw their processes gone
    assert list(runs.status) == ["interrupted"] * 5 + ["done"]


@pytest.mark.slow
def test_torchrun_two_processes_equal_single(tmp_path):
    pytest.importorskip("torch.distributed.run")
    single = tmp_path / "single"
    run_plan(load_plan(_write_plan(tmp_path / "s.toml", single)))
    p = _write_plan(tmp_path / "d.toml", tmp_path / "dist")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29500 + os.getpid() % 1000), "-m", "robench", "sweep", str(p), "-q"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    pd.testing.assert_frame_equal(outcomes(single), outcomes(tmp_path / "dist"))
    assert Store(tmp_path / "dist").runs().world_size.iloc[0] == 2


def test_export_loads_without_options(tmp_path, run_cli):
    run_plan(plan(tmp_path, corruption_names=["fog"], severities=[2]))
    code, out, err = run_cli("export", tmp_path, "--out", tmp_path / "r.csv")
    assert code == 0, err
    df = pd.read_csv(tmp_path / "r.csv")
    for col in ("model", "variant", "dataset", "n", "threat", "attack", "norm", "eps", "corruption", "severity",
                "metric", "value", "ci_low", "ci_high", "protocol", "run_id"):
        assert col in df.columns
    assert len(df) == 2 and set(df.metric) == {"accuracy"}
    code, _, _ = run_cli("export", tmp_path, "--out", tmp_path / "r.jsonl", "--format", "jsonl")
    assert code == 0 and len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


# ---- data specs ---------------------------------------------------------------------------------------------------
def _fake_imagenet(root: Path, wnids, per_class=2, size=40):
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)).save(root / w / f"{i}.JPEG")
    return root


def test_imagenet_folder_uses_standard_class_index(tmp_path):
    from robench.data.imagenet import imagenet_wnids
    from robench.data.formats import load_clean
    from robench.zoo.registry import model_info

    wn = imagenet_wnids()
    root = _fake_imagenet(tmp_path / "val", [wn[999], wn[4], wn[500]])
    data = load_clean(f"imagenet:{root}", model_info("deit-tiny-standard"))
    labels = sorted({y for _, y, _ in (data.dataset[i] for i in range(len(data)))})
    assert labels == [4, 500, 999]  # not 0, 1, 2 from the sorted subfolders
    x, _, _ = data.dataset[0]
    assert x.shape == (3, 224, 224) and 0 <= x.min() and x.max() <= 1


def test_imagenet_sample_labels(imagenet_sample):
    from robench.data.formats import load_clean
    from robench.zoo.registry import model_info

    data = load_clean(f"imagenet:{imagenet_sample}", model_info("deit-tiny-standard"), limit=20)
    lines = (imagenet_sample / "classes.tsv").read_text().splitlines()
    index = {ln.split("\t")[0]: i for i, ln in enumerate(lines)}
    for i in range(len(data)):
        _, y, _ = data.dataset[i]
        assert y == index[data.sample_ids[i].split("/")[0]]


def test_bad_inputs_one_line_exit_2_nothing_written(tmp_path, run_cli):
    wn_root = _fake_imagenet(tmp_path / "inet", ["n01440764"])
    empty = tmp_path / "empty"
    empty.mkdir()
    bogus = _fake_imagenet(tmp_path / "bogus", ["n01440764", "not_a_wnid"])
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    badplan = tmp_path / "bad.toml"
    badplan.write_text('data = "digits"\nbatchsize = 3\n[[models]]\nname = "demo-standard"\n')
    cases = [
        (["--data", "imagenet2:/x"], "unknown data spec 'imagenet2:/x'.*did you mean: imagenet"),
        (["--data", f"imagenet:{tmp_path / 'nope'}"], "directory not found"),
        (["--data", f"imagenet:{empty}"], "no class folders"),
        (["--data", f"imagenet:{bogus}"], "not in the class list: not_a_wnid"),
        (["--data", f"imagenet:{wn_root}"], "has 10 classes but data .* has 1000"),
        (["--data", "digits", "--severity", "7", "--corruptions", "cifar10-c"], "severity must be in 1..5"),
        (["--data", "digits", "--corruptions", "imagenet-cc"], "unknown corruption suite"),
        (["--data", "digits", "--precision", "fp8"], "unknown precision"),
    ]
    out = tmp_path / "out"
    for args, msg in cases:
        code, _, err = run_cli("eval", "--model", "demo-standard", "--out", out, "-q", *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        import re
        assert re.search(msg, err), (msg, err)
        assert not (out / "robench.sqlite").exists() or Store(out).results().empty
    if os.geteuid() != 0:  # root can write anywhere
        code, _, err = run_cli("eval", "--model", "demo-standard", "--data", "digits", "--out", ro / "x", "-q")
        assert code == 2 and "not writable" in err
    code, _, err = run_cli("sweep", badplan)
    assert code == 2 and "unknown key(s) 'batchsize'" in err and "did you mean: batch_size" in err


def test_unreadable_image_skipped_or_strict(tmp_path):
    from robench.data.imagenet import imagenet_wnids

    root = _fake_imagenet(tmp_path / "val", [imagenet_wnids()[0]], per_class=3)
    (root / imagenet_wnids()[0] / "1.JPEG").write_bytes(b"not a jpeg")
    p = dict(models=[ModelEntry("timm:resnet18", label="r18", random_init=True)], data=f"imagenet:{root}",
             out=str(tmp_path / "o"), quiet=True, corruptions=[], batch_size=2)
    res = run_plan(Plan(**p))  # reported through the run (tests/test_safe_defaults.py), not a Python warning
    assert res.n.iloc[0] == 2 and res.skipped.iloc[0] == 1
    with pytest.raises(RobenchError, match="unreadable image"):
        run_plan(Plan(**{**p, "strict": True, "out": str(tmp_path / "o2")}))


def test_nan_logits_name_the_model(tmp_path):
    from safetensors.torch import save_file

    from robench.zoo.registry import create_model

    net = create_model("demo-standard").net
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd["head.bias"][:] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    with pytest.raises(RobenchError, match="model broken produced NaN/inf logits"):
        run_plan(plan(tmp_path / "o", models=[ModelEntry("demo-standard", str(tmp_path / "nan.safetensors"),
                                                          label="broken")], corruptions=[]))


def test_incompatible_store_version(tmp_path):
    run_plan(plan(tmp_path, corruptions=[]))
    db = sqlite3.connect(tmp_path / "robench.sqlite")
    db.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RobenchError, match="schema version 999"):
        run_plan(plan(tmp_path, corruptions=[]))


def test_config_file_supplies_data_and_checkpoints(tmp_path, run_cli, monkeypatch):
    from safetensors.torch import save_file

    from robench.zoo.registry import create_model

    net = create_model("demo-quest").net
    save_file(net.state_dict(), str(tmp_path / "q.safetensors"))
    (tmp_path / "robench.toml").write_text(textwrap.dedent(f"""
        data = "digits"
        limit = 16
        out = "{tmp_path / 'res'}"
        [checkpoints]
        demo-quest = "{tmp_path / 'q.safetensors'}"
    """))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("eval", "--model", "demo-quest", "--json")
    assert code == 0, err
    import json
    rows = json.loads(out)
    assert rows[0]["n"] == 16
    models = Store(tmp_path / "res").models()
    assert models.checkpoint.iloc[0].endswith("q.safetensors")


def test_attack_cells_independent_of_batch_size(tmp_path):
    """PGD (per-sample random starts) and AutoAttack (fixed 32-sample blocks) give the same per-sample outcomes
    whatever the batch size; the sanity probe and flags are recorded."""
    kw = dict(limit=40, corruptions=[], attacks=["pgd", "autoattack-fast"], eps=[2 / 255, 8 / 255], chunk_size=64)
    res = run_plan(plan(tmp_path / "a", batch_size=40, **kw))
    run_plan(plan(tmp_path / "b", batch_size=9, **kw))
    pd.testing.assert_frame_equal(outcomes(tmp_path / "a"), outcomes(tmp_path / "b"))
    att = res[res.threat == "attack"]
    assert set(att.attack) == {"pgd", "autoattack-fast", "probe-large-eps"}
    clean = res[res.threat == "clean"].value.iloc[0]
    assert (att.value <= clean + 1e-9).all()  # an attack never raises accuracy above clean
    pgd = att[att.attack == "pgd"].sort_values("eps").value.tolist()
    assert pgd[0] >= pgd[1]
    s = Store(tmp_path / "a")
    assert isinstance(s.flags(), pd.DataFrame)


def test_diagnostics_recorded_and_reported(tmp_path):
    """A sweep with diagnostics stores per-layer attention statistics (a diagnostics cell) and the report draws them."""
    run_plan(plan(tmp_path, models=[ModelEntry("demo-quest"), ModelEntry("demo-elliptical")], corruptions=[],
                  diagnostics=True, diagnostics_limit=16))
    diag = Store(tmp_path).diagnostics()
    assert set(diag.model) == {"demo-quest", "demo-elliptical"}
    assert {"attn_entropy_mean", "collapse_cos", "k_raw_norm_mean"} <= set(diag.stat)
    assert set(diag.layer) == {0, 1, 2, 3}  # the demo ViT has 4 blocks
    assert "m_mean" in set(diag[diag.model == "demo-elliptical"].stat)
    assert Store(tmp_path).results().threat.tolist() == ["clean", "clean"]  # diagnostics are not accuracy rows
    from robench.report.render import report

    html = Path(report([tmp_path], tmp_path / "rep")).read_text()
    assert "Attention diagnostics" in html and "No attention diagnostics" not in html
    from robench.run import export

    rows = pd.read_csv(export(Store(tmp_path), tmp_path / "diag.csv", table="diagnostics"))
    assert len(rows) == len(diag) and {"model", "layer", "head", "stat", "value"} <= set(rows.columns)


def test_out_dir_not_writable(tmp_path, run_cli):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli("eval", "--model", "demo-standard", "--data", "digits", "--out", blocker / "res", "-q")
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1
