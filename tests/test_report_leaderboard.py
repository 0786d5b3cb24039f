"""Leaderboard columns, missing cells, paper labels, mCE, sorting, filters and the four output formats."""

import json
from io import StringIO

import pandas as pd
import pytest

from robench.cli import main
from robench.errors import RobenchError
from robench.report.leaderboard import format_leaderboard, leaderboard
from robench.report.results import alexnet_table
from robench.report.stats import AlexNetTable
from robench.report.testing import attack, clean, corruption, synthetic_store

N = 200


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("lb") / "results"
    models = {
        "vit-std": {"variant": "standard", "cells": [
            (clean(), 0.90), (attack("pgd", 4 / 255), 0.30), (attack("fgsm", 1 / 255), 0.70),
            (attack("autoattack", 4 / 255), 0.25), (attack("pgd", 0.5, norm="L2"), 0.55),
            (attack("pgd", 4 / 255, protocol="paper"), 0.35),
            *[(corruption("gaussian_noise", s, "noise"), 0.8 - 0.1 * s) for s in range(1, 6)],
            *[(corruption("fog", s, "weather"), 0.85 - 0.05 * s) for s in range(1, 6)],
            (corruption("saturate", 2, "extra"), 0.5)]},
        "vit-quest": {"variant": "quest", "params": 150_000, "cells": [
            (clean(), 0.88), (attack("pgd", 4 / 255), 0.40), (attack("autoattack", 4 / 255), 0.33),
            *[(corruption("gaussian_noise", s, "noise"), 0.8 - 0.05 * s) for s in range(1, 5)]]},
    }
    flags = {"vit-std": [{"flag": "fgsm_beats_pgd", "message": "m", "cells": [attack("pgd", 4 / 255)]},
                         {"flag": "other", "message": "m2"}]}
    synthetic_store(path, models, n=N, flags=flags)
    return path


TABLE = AlexNetTable({"gaussian_noise": 0.8, "fog": 0.6}, clean_err=0.4)


def test_columns_values_and_missing(store):
    df = leaderboard([store], alexnet=TABLE).set_index("model")
    for col in ("variant", "arch", "params", "dataset", "clean_acc", "corruptions_acc", "corruptions_mce",
                "corruptions_rel_mce", "fgsm_linf_acc@1/255", "pgd_linf_acc@4/255", "pgd_l2_acc@0.5",
                "autoattack_acc", "pgd_linf_acc@4/255 (paper)", "corruptions_noise_acc", "extra_corruptions_acc",
                "flags"):
        assert col in df.columns, col
    std, quest = df.loc["vit-std"], df.loc["vit-quest"]
    assert std["clean_acc"] == pytest.approx(0.90) and quest["pgd_linf_acc@4/255"] == pytest.approx(0.40)
    assert std["autoattack_acc"] == pytest.approx(0.25) and std["pgd_linf_acc@4/255 (paper)"] == pytest.approx(0.35)
    assert std["flags"] == 2 and quest["flags"] == 0 and quest["params"] == 150_000
    # mean corruption accuracy over the benchmark corruptions only (the extra one aside)
    assert std["corruptions_acc"] == pytest.approx((0.5 + 0.7) / 2)
    assert std["extra_corruptions_acc"] == pytest.approx(0.5)
    # complete table -> mCE; quest lacks severity 5 and fog -> empty, never 0
    ce_gn = sum(0.2 + 0.1 * s for s in range(1, 6)) / (5 * 0.8)
    ce_fog = sum(0.15 + 0.05 * s for s in range(1, 6)) / (5 * 0.6)
    assert std["corruptions_mce"] == pytest.approx((ce_gn + ce_fog) / 2)
    assert pd.isna(quest["corruptions_mce"]) and pd.isna(quest["fgsm_linf_acc@1/255"])
    assert any("vit-quest" in n and "mCE not computed" in n for n in leaderboard([store], alexnet=TABLE).attrs["notes"])


def test_default_sort_is_autoattack_and_sort_option(store):
    assert list(leaderboard([store], alexnet=TABLE)["model"]) == ["vit-quest", "vit-std"]
    assert list(leaderboard([store], sort="clean_acc", alexnet=TABLE)["model"]) == ["vit-std", "vit-quest"]
    # missing values sort last whatever the direction
    assert list(leaderboard([store], sort="corruptions_mce", alexnet=TABLE)["model"]) == ["vit-std", "vit-quest"]
    with pytest.raises(RobenchError, match="cannot sort by 'clean_ac'.*did you mean: clean_acc"):
        leaderboard([store], sort="clean_ac")


def test_filters(store):
    assert list(leaderboard([store], variant="quest")["model"]) == ["vit-quest"]
    assert list(leaderboard([store], model=["vit-std"])["model"]) == ["vit-std"]
    assert set(leaderboard([store], model="vit-*")["model"]) == {"vit-std", "vit-quest"}
    with pytest.raises(RobenchError, match="variant 'qest'.*did you mean: quest"):
        leaderboard([store], variant="qest")
    with pytest.raises(RobenchError, match="no model 'vit-stdd'"):
        leaderboard([store], model="vit-stdd")


def test_formats(store):
    df = leaderboard([store], ci=True, alexnet=TABLE)
    assert {"clean_acc_ci_low", "clean_acc_ci_high", "pgd_linf_acc@4/255_ci_low (paper)"} <= set(df.columns)
    assert "corruptions_acc_ci_low" not in df.columns  # aggregates carry no single-cell interval
    md = format_leaderboard(df, "md")
    lines = md.splitlines()
    assert lines[0].startswith("| model |") and set(lines[1]) <= set("|:-")
    quest = next(line for line in lines if line.startswith("| vit-quest"))
    assert "| 88.00 [" in quest and "| 40.00 [" in quest  # percent with interval
    assert "|  |" in quest  # missing cells empty
    assert "(paper)" in lines[0]
    csv = pd.read_csv(StringIO(format_leaderboard(df, "csv")))
    assert csv.set_index("model").loc["vit-quest", "clean_acc"] == pytest.approx(0.88)
    assert pd.isna(csv.set_index("model").loc["vit-quest", "corruptions_mce"])
    records = json.loads(format_leaderboard(df, "json"))
    quest = next(r for r in records if r["model"] == "vit-quest")
    assert quest["corruptions_mce"] is None and quest["pgd_linf_acc@4/255"] == pytest.approx(0.4)
    tex = format_leaderboard(df, "latex")
    assert r"\begin{tabular}" in tex and r"clean\_acc" in tex and r"\bottomrule" in tex and "88.00" in tex
    with pytest.raises(RobenchError, match="unknown leaderboard format"):
        format_leaderboard(df, "xlsx")


def test_imagenet_c_mce_with_shipped_table(tmp_path):
    table = alexnet_table()
    if table is None:
        pytest.skip("no ImageNet-C suite with AlexNet errors")
    # a model exactly as good as AlexNet everywhere scores mCE = relative mCE = 100%
    cells = [(clean("imagenet"), 1 - table.clean_err)]
    cells += [(corruption(c, s, "noise", dataset="imagenet"), 1 - e) for c, e in table.err.items() for s in range(1, 6)]
    synthetic_store(tmp_path, {"alexnet-like": {"cells": cells}}, n=1000)
    row = leaderboard([tmp_path]).iloc[0]
    assert row["corruptions_mce"] == pytest.approx(1.0, abs=1e-3)
    assert row["corruptions_rel_mce"] == pytest.approx(1.0, abs=5e-3)


def test_cli_leaderboard(store, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", str(store), "--format", "md", "--ci"])
    assert e.value.code == 0
    assert "| vit-std |" in capsys.readouterr().out
    out = tmp_path / "lb.csv"
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", str(store), "--format", "csv", "--out", str(out), "--variant", "quest"])
    assert e.value.code == 0 and list(pd.read_csv(out)["model"]) == ["vit-quest"]
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "robench: error: no results store" in capsys.readouterr().err


def test_several_stores(store, tmp_path):
    synthetic_store(tmp_path / "more", {"vit-qk": {"variant": "qknorm", "cells": [(clean(), 0.5)]},
                                        "vit-std": {"cells": [(clean(), 0.91)]}}, n=100)
    df = leaderboard([store, tmp_path / "more"], sort="clean_acc").set_index("model")
    assert list(df.index) == ["vit-std", "vit-quest", "vit-qk"]
    # the same model and cell in two stores: the later store wins; its other cells stay
    assert df.loc["vit-std", "clean_acc"] == pytest.approx(0.91)
    assert df.loc["vit-std", "pgd_linf_acc@4/255"] == pytest.approx(0.30)
    assert pd.isna(df.loc["vit-qk", "pgd_linf_acc@4/255"])
