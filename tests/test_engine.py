"""The engine in parts (issue 19): one resolve step per run (each spec parsed / each suite loaded once), cells
that carry their identity (a user suite's values, not its name), executors testable alone."""

import sys
import pytest

import torch

import robench.run.cells  # noqa: F401  (load every module whose bindings the counters replace)
import robench.run.engine  # noqa: F401
from robench.attack import load_attack_suite
from robench.corrupt import corrupt_batch, get_suite
from robench.data.formats import parse_data
from robench.run import ModelEntry, Plan, Store, run_plan
from robench.run.resolve import resolve
from robench.errors import RobenchError


def _count(monkeypatch, name: str, original) -> list:
    """Replace `name` in every loaded robench module that holds `original`; record the spec of each call made
    with a string (a parse or a load; a parsed object passing through is not one)."""
    calls = []

    def counted(*a, **k):
        if a and isinstance(a[0], str):
            calls.append(a[0])
        return original(*a, **k)

    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("robench") and getattr(mod, name, None) is original:
            monkeypatch.setattr(mod, name, counted)
    return calls


def test_each_spec_parsed_and_each_suite_loaded_once_per_run(tmp_path, monkeypatch):
    data = _count(monkeypatch, "parse_data", parse_data)
    attacks = _count(monkeypatch, "load_attack_suite", load_attack_suite)
    suites = _count(monkeypatch, "get_suite", get_suite)
    plan = Plan(models=[ModelEntry("demo-quest"), ModelEntry("demo-standard")], data="digits", limit=16,
                corruptions=["cifar10-c"], corruption_names=["fog", "contrast"], severities=[1, 3],
                attacks=["fgsm", "pgd"], eps=[2 / 255], out=str(tmp_path), quiet=True)
    res = run_plan(plan)
    assert set(res.threat) == {"clean", "corruption", "attack"}  # the counted functions really were on the path
    assert data == ["digits"]
    assert sorted(attacks) == ["fgsm", "pgd"]
    assert suites == ["cifar10-c"]


def test_eps_option_parsed_once_per_run(tmp_path, monkeypatch):
    """--eps (a string) is parsed by plan_from_options; the resolve step and the attack suites get the floats."""
    from robench.attack import spec as spec_module
    from robench.run.resolve import plan_from_options

    eps = _count(monkeypatch, "parse_eps", spec_module.parse_eps)
    plan = plan_from_options(["demo-quest"], data="digits", limit=8, attacks=["fgsm", "pgd"], eps="1/255,3/255",
                             out=str(tmp_path), quiet=True)
    res = run_plan(plan)
    att = res[(res.threat == "attack") & (res.attack != "probe-large-eps")]
    assert sorted(set(att.eps.round(6))) == [round(1 / 255, 6), round(3 / 255, 6)]
    assert eps.count("1/255,3/255") == 1


def _suite(path, name: str, values) -> str:
    path.write_text(f'name = "{name}"\nparams = "cifar"\n[corruptions.gaussian_noise]\ncategory = "noise"\n'
                    f"severity = {list(values)}\n")
    return str(path)


def _noise_plan(out, suite: str) -> Plan:
    return Plan(models=[ModelEntry("demo-quest")], data="digits", limit=64, corruptions=[suite], severities=[3],
                out=str(out), quiet=True)


def test_a_user_suite_named_like_a_shipped_one_is_refused_and_its_values_identify_its_cells(tmp_path):
    heavy = [3.0] * 5
    shadow = _suite(tmp_path / "shadow.toml", "cifar10-c", heavy)
    named = _suite(tmp_path / "heavy.toml", "my-heavy", heavy)
    shipped = run_plan(Plan(**{**_noise_plan(tmp_path / "s", "cifar10-c").__dict__, "corruption_names":
                               ["gaussian_noise"]}))
    n_cells = len(Store(tmp_path / "s").cells())
    with pytest.raises(RobenchError, match="named 'cifar10-c' like a shipped suite"):
        run_plan(_noise_plan(tmp_path / "s", shadow))  # never run with the shipped values, never mixed in
    assert len(Store(tmp_path / "s").cells()) == n_cells
    mine = run_plan(_noise_plan(tmp_path / "s", named))
    v = {k: r[r.threat == "corruption"].value.iloc[0] for k, r in (("shipped", shipped), ("mine", mine))}
    cid = {k: r[r.threat == "corruption"].cell_id.iloc[0] for k, r in (("shipped", shipped), ("mine", mine))}
    assert cid["shipped"] != cid["mine"]  # other values: another cell in the same store
    assert v["mine"] < v["shipped"] - 0.3  # std 3.0 noise destroys the digits; the shipped s3 (0.08) does not


def test_editing_a_user_suite_recomputes_its_cells(tmp_path, capfd):
    path = tmp_path / "mine.toml"
    run_plan(_noise_plan(tmp_path / "s", _suite(path, "mine", [0.01] * 5)))
    n_cells = len(Store(tmp_path / "s").cells())
    run_plan(_noise_plan(tmp_path / "s", str(path)))  # unchanged: reused
    assert len(Store(tmp_path / "s").cells()) == n_cells
    res = run_plan(_noise_plan(tmp_path / "s", _suite(path, "mine", [3.0] * 5)))
    cells = Store(tmp_path / "s").cells()
    assert len(cells) == n_cells + 1 and (cells.status == "done").all()
    assert res[res.threat == "corruption"].value.iloc[0] < 0.5


def test_every_cell_carries_weights_data_and_values(tmp_path):
    from robench.run.cells import ROBENCH_SCHEMA, plan_jobs
    from robench.data.formats import load_clean
    from robench.zoo.sources import build_model

    rp = resolve(Plan(models=[ModelEntry("demo-quest")], data="digits", limit=16, corruptions=["cifar10-c"],
                      corruption_names=["fog"], severities=[2], attacks=["fgsm"], out=str(tmp_path), quiet=True))
    model = build_model(rp.models[0].entry)
    data = load_clean(rp.data, model.info, limit=16)
    cells = plan_jobs(rp, model.info, data)[0].cells
    assert not (tmp_path / "robench.sqlite").exists()  # resolving and planning write nothing
    for c in cells:
        p = c.params
        assert p["weights"] == model.info.checkpoint_sha256 and p["data_fingerprint"] == data.fingerprint
        assert p["limit"] == 16 and p["seed"] == 0 and p["robench_schema"] == ROBENCH_SCHEMA == 2
    fog = next(c for c in cells if c.threat == "corruption")
    suite = get_suite("cifar10-c")
    assert fog.suite is suite and fog.params["suite_values"] == suite.identity("fog")
    assert fog.params["suite_values"]["severity_values"] == suite.table["fog"]["severity"]


def test_executors_alone_match_the_model_and_corrupt_batch():
    """The clean and corruption executors on one batch, without a runner or a store."""
    from robench.run.cache import CorruptionCache
    from robench.run.cells import Cell
    from robench.run.execute import ChunkResult, CorruptionExecutor, run_clean
    from robench.run.execute import ModelRun
    from robench.seeding import sample_seeds
    from robench.zoo.registry import create_model

    model = create_model("demo-quest").eval()
    g = torch.Generator().manual_seed(0)
    x, y, idx = torch.rand(6, 3, 32, 32, generator=g), torch.arange(6) % 10, torch.arange(10, 16)
    suite = get_suite("cifar10-c")
    clean = Cell({"threat": "clean"}, "clean", cell_id=1)
    fog = Cell({"corruption": "fog", "severity": 2, "n": 14, "backend": "torch", "seed": 0, "data_fingerprint": "f",
                "suite_values": suite.identity("fog")}, "corruption", cell_id=2, suite=suite)
    out = ChunkResult([clean, fog])
    mr = ModelRun(model, model, "m", classes=10)
    pred = run_clean(mr, [clean], x, y, idx, out)
    cache = CorruptionCache(16)
    CorruptionExecutor(cache, seed=0).run(mr, fog, x, y, idx, out)
    with torch.no_grad():
        assert torch.equal(pred, model(x).argmax(1))
        xc = corrupt_batch(x[:4], "fog", 2, sample_seeds(0, idx[:4], "fog", 2), suite=suite)
        want = model(xc).argmax(1)
    res, _, _ = out.part()
    assert res[1][0] == list(range(10, 16)) and res[1][2] == pred.tolist()
    assert res[2][0] == [10, 11, 12, 13] and res[2][2] == want.tolist()  # n=14: samples 14, 15 not corrupted
    assert len(cache.items) == 1 and next(iter(cache.items))[1] != "cifar10-c"  # keyed by values, not the name


def test_cuda_oom_retry_records_each_sample_once(monkeypatch):
    """CUDA OOM after a batch's clean forward: its outcomes are dropped and its halves run again, so every sample is
    recorded once (the clean rows of the failed batch used to stay, and the halves added them a second time)."""
    from types import SimpleNamespace

    from robench.run import execute
    from robench.run.cache import CorruptionCache
    from robench.run.cells import Cell
    from robench.zoo.registry import create_model

    model = create_model("demo-quest").eval()
    g = torch.Generator().manual_seed(1)
    x, y, idx = torch.rand(8, 3, 32, 32, generator=g), torch.arange(8) % 10, torch.arange(8)
    suite = get_suite("cifar10-c")
    clean = Cell({"threat": "clean"}, "clean", cell_id=1)
    fog = Cell({"corruption": "fog", "severity": 2, "n": 8, "backend": "torch", "seed": 0, "data_fingerprint": "f",
                "suite_values": suite.identity("fog")}, "corruption", cell_id=2, suite=suite)
    real = execute.CorruptionExecutor.run

    def run_small_batches_only(self, mr, cell, x, y, idx, out):
        if len(y) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, mr, cell, x, y, idx, out)

    monkeypatch.setattr(execute.CorruptionExecutor, "run", run_small_batches_only)
    logs = []
    runner = execute.ChunkRunner(execute.ModelRun(model, model, "m", classes=10), SimpleNamespace(seed=0, compile=False),
                                 torch.device("cpu"), execute.CorruptionExecutor(CorruptionCache(0), 0), logs.append)
    out = execute.ChunkResult([clean, fog])
    runner.batch([clean, fog], x, y, idx, out)
    res, _, _ = out.part()
    assert res[1][0] == list(range(8)) and res[2][0] == list(range(8))  # each sample once, in order
    with torch.no_grad():
        assert res[1][2] == model(x).argmax(1).tolist()
    assert logs == ["CUDA out of memory: retrying with batch size 4"]


def test_eval_and_evaluate_take_the_same_path(tmp_path, run_cli, monkeypatch):
    """`robench eval` and robench.evaluate: plan_from_options, then run_plan (resolve, then the runner)."""
    import robench
    import robench.run.engine as engine

    seen = []
    real = engine.run_plan
    monkeypatch.setattr(engine, "run_plan", lambda plan, *a, **k: seen.append(plan.command) or real(plan, *a, **k))
    code, out, err = run_cli("eval", "-m", "demo-quest", "-d", "digits", "--limit", "8", "-q", "--out", tmp_path / "a")
    assert code == 0, err
    df = robench.evaluate("demo-quest", "digits", limit=8, out=tmp_path / "b")
    assert [c.split(" ")[0] for c in seen] == ["robench", "robench.evaluate"]
    assert Store(tmp_path / "a").results().value.tolist() == df.value.tolist()


def test_cells_of_another_schema_are_recomputed_not_reused(tmp_path, monkeypatch):
    import robench.run.cells as cells

    plan = dict(models=[ModelEntry("demo-quest")], data="digits", limit=16, corruptions=["cifar10-c"],
                corruption_names=["fog"], severities=[2], out=str(tmp_path), quiet=True)
    monkeypatch.setattr(cells, "ROBENCH_SCHEMA", 1)
    old = run_plan(Plan(**plan))
    monkeypatch.setattr(cells, "ROBENCH_SCHEMA", 2)
    new = run_plan(Plan(**plan))
    assert set(old.cell_id).isdisjoint(new.cell_id)  # new cells, computed again
    assert len(Store(tmp_path).cells()) == 2 * len(old)
    assert old.value.tolist() == new.value.tolist()  # same outcomes on the shipped suite
