"""The Python API as README documents it: the example runs as written; evaluate / leaderboard / report."""

import re
from pathlib import Path

import pytest

import robench

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```\s*<!-- /{marker} -->", README.read_text(), re.S)
    assert m, f"README has no {marker} block"
    return m.group(1)


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no robench.toml, nothing written here
    ns = {}
    exec(compile(readme_block("api-example"), "README.md", "exec"), ns)
    df = ns["df"]
    assert set(df.threat) == {"clean", "attack"} and (df.n == 64).all()
    pgd = df[df.attack == "pgd"].set_index("eps").value
    assert sorted(pgd.index) == pytest.approx([2 / 255, 8 / 255])
    clean = df[df.threat == "clean"].value.iloc[0]
    assert clean > 0.8 and pgd[max(pgd.index)] <= pgd[min(pgd.index)] <= clean  # a trained model, weaker under attack
    out = capsys.readouterr().out
    assert "| demo-quest |" in out and "pgd_linf_acc@8/255" in out
    assert list(tmp_path.iterdir()) == []  # the in-memory store left nothing behind


def test_evaluate_with_store_then_leaderboard_and_report(tmp_path):
    from robench.zoo import create_model

    model = create_model("demo-standard")
    df = robench.evaluate(model, "digits", limit=32, device="cpu", out=tmp_path / "r", label="std")
    assert list(df.threat) == ["clean"] and df.model.iloc[0] == "std"
    board = robench.leaderboard(tmp_path / "r")
    assert board.loc[0, "clean_acc"] == pytest.approx(df.value.iloc[0])
    assert robench.leaderboard(df, fmt="csv").splitlines()[0].startswith("model,variant")
    html = robench.write_report(tmp_path / "r")
    assert html.is_file() and html.suffix == ".html"
    with pytest.raises(robench.RobenchError, match="a report needs a results store"):
        robench.write_report(df)
    # a name works as well as a module; an unknown one is a one-line error
    assert robench.evaluate("demo-standard", "digits", limit=32, device="cpu").value.iloc[0] == df.value.iloc[0]
    with pytest.raises(robench.RobenchError, match="unknown model 'demo-qest'.*did you mean: demo-quest"):
        robench.evaluate("demo-qest", "digits")


def test_inspect_out_builds_the_model_once(tmp_path, run_cli, monkeypatch):
    import robench.zoo.sources as sources  # every model source builds registry models through this name

    calls = []
    real = sources.create_model
    monkeypatch.setattr(sources, "create_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    code, out, err = run_cli("inspect", "--model", "demo-quest", "--data", "digits", "--limit", "8", "--out",
                             tmp_path / "s", "--json")
    assert code == 0, err
    assert len(calls) == 1  # the store's cells and the printed diagnostics come from the same model
    from robench.run import Store

    store = Store(tmp_path / "s")
    assert store.results().threat.tolist() == ["clean"] and len(store.diagnostics()) > 0
