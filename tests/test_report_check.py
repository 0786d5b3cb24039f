"""The CI regression gate: verdicts, exit codes, CSV and store baselines, errors."""

import numpy as np
import pandas as pd
import pytest

from robench.cli import main
from robench.errors import RobenchError
from robench.report.check import check, format_check
from robench.report.testing import attack, clean, corruption, synthetic_store
from robench.run import export

PGD = attack("pgd", 4 / 255)


def nested(n, k_base, k_cur):
    """Baseline right on the first k_base samples, current on the first k_cur: every change is one-directional."""
    base, cur = np.zeros(n, int), np.zeros(n, int)
    base[:k_base], cur[:k_cur] = 1, 1
    return base, cur


def stores(tmp_path, n, k_base, k_cur, extra_base=(), extra_cur=()):
    b, c = nested(n, k_base, k_cur)
    base = synthetic_store(tmp_path / "base", {"vit": {"cells": [(PGD, b), *extra_base]}})
    cur = synthetic_store(tmp_path / "cur", {"vit": {"cells": [(PGD, c), *extra_cur]}})
    csv = export(base, tmp_path / "base.csv")
    return base, cur, csv


@pytest.mark.parametrize("kind", ["csv", "store"])
def test_large_insignificant_drop_on_small_n_passes(tmp_path, kind):
    base, cur, csv = stores(tmp_path, n=20, k_base=12, k_cur=9)  # 60% -> 45%: -15 pp
    df, code = check(csv if kind == "csv" else tmp_path / "base", tmp_path / "cur")
    row = df.iloc[0]
    assert code == 0 and row["verdict"] == "drop, not significant"
    assert row["delta_pp"] == pytest.approx(-15.0)
    assert row["test"] == ("two-proportion" if kind == "csv" else "mcnemar")
    assert row["p"] > 0.05
    if kind == "store":  # 3 losses, no gains: one-sided exact p = 1/8
        assert row["p"] == pytest.approx(1 / 8)


@pytest.mark.parametrize("kind", ["csv", "store"])
def test_small_significant_drop_beyond_tolerance_fails(tmp_path, kind):
    base, cur, csv = stores(tmp_path, n=10000, k_base=8000, k_cur=7850)  # -1.5 pp on n = 10000
    df, code = check(csv if kind == "csv" else tmp_path / "base", tmp_path / "cur", tolerance=1.0)
    assert code == 1 and df.iloc[0]["verdict"] == "regression"
    assert df.iloc[0]["p"] < 0.01
    # the same drop is tolerated with a larger tolerance
    df, code = check(csv, tmp_path / "cur", tolerance=2.0)
    assert code == 0 and df.iloc[0]["verdict"] == "ok"


def test_significant_drop_within_tolerance_and_improvement_pass(tmp_path):
    base, cur, csv = stores(tmp_path, n=10000, k_base=8000, k_cur=7920,  # -0.8 pp, significant by McNemar
                            extra_base=[(clean(), 0.90)], extra_cur=[(clean(), 0.97)])
    df, code = check(tmp_path / "base", tmp_path / "cur", tolerance=1.0)
    assert code == 0
    verdicts = dict(zip(df["cell"], df["verdict"]))
    assert verdicts == {"clean": "improved", "pgd Linf ε=4/255": "ok"}
    assert df.set_index("cell").loc["pgd Linf ε=4/255", "p"] < 0.05


def test_missing_cell_is_error_unless_allowed(tmp_path):
    fog = corruption("fog", 3, "weather")
    base, cur, csv = stores(tmp_path, n=50, k_base=40, k_cur=40, extra_base=[(fog, 0.5)])
    df, code = check(csv, tmp_path / "cur")
    assert code == 2
    assert list(zip(df["cell"], df["verdict"])) == [("fog s3", "missing"), ("pgd Linf ε=4/255", "ok")]
    assert "ERROR" in format_check(df) and "--allow-missing" in format_check(df)
    df, code = check(csv, tmp_path / "cur", allow_missing=True)
    assert code == 0


def test_bad_baselines_are_errors(tmp_path):
    base, cur, csv = stores(tmp_path, n=20, k_base=10, k_cur=10)
    with pytest.raises(RobenchError, match="not found"):
        check(tmp_path / "nope.csv", tmp_path / "cur")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"model": ["vit"], "acc": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(RobenchError, match="not a results CSV exported by robench"):
        check(bad, tmp_path / "cur")
    other = synthetic_store(tmp_path / "other", {"someone-else": {"cells": [(PGD, 0.5)]}})
    with pytest.raises(RobenchError, match="no overlapping cells"):
        check(csv, tmp_path / "other")
    with pytest.raises(RobenchError, match="no results store"):
        check(csv, tmp_path / "empty-dir")
    assert other is not None


def test_cli_exit_codes_and_summary(tmp_path, capsys):
    base, cur, csv = stores(tmp_path, n=10000, k_base=8000, k_cur=7850)
    summary = tmp_path / "summary.md"

    def run(*args):
        with pytest.raises(SystemExit) as e:
            main(["check", *args])
        return e.value.code

    assert run("--baseline", str(csv), "--store", str(tmp_path / "cur"), "--summary", str(summary)) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "| model |" in out and "FAIL" in summary.read_text()
    # the baseline against itself: no regression
    assert run("--baseline", str(csv), "--store", str(tmp_path / "base")) == 0
    assert "PASS" in capsys.readouterr().out
    assert run("--baseline", str(tmp_path / "missing.csv"), "--store", str(tmp_path / "cur")) == 2
    assert "robench: error: baseline not found" in capsys.readouterr().err
