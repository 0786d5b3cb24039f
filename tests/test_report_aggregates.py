"""Honest aggregates (issue 19.6) and distinct rows for distinct weights (issue 21), report side; the report API's
names (issue 19.7). Every expected number is computed by hand from the accuracies written into the test store."""

import math
import re

import pandas as pd
import pytest

import robench
from robench.errors import RobenchError
from robench.report.leaderboard import format_leaderboard, leaderboard
from robench.labels import weights_tags
from robench.report.testing import clean, corruption, synthetic_store

N = 200  # synthetic outcomes hit round(acc * N) exactly: every accuracy below is a multiple of 1/200

CELLS = [(clean(), 0.90),
         (corruption("gaussian_noise", 1, "noise"), 0.80), (corruption("gaussian_noise", 2, "noise"), 0.60),
         (corruption("shot_noise", 1, "noise"), 0.50),
         (corruption("fog", 1, "weather"), 0.40), (corruption("fog", 3, "weather"), 0.20),
         # the suite's extras: never in corruptions_acc, the category columns or mCE
         (corruption("speckle_noise", 1, "extra"), 0.10), (corruption("spatter", 2, "extra"), 0.30),
         (corruption("saturate", 1, "extra"), 0.95)]


@pytest.fixture
def store(tmp_path):
    synthetic_store(tmp_path / "s", {"m": {"cells": CELLS}}, n=N).close()
    return tmp_path / "s"


def test_corruption_mean_is_over_benchmark_corruptions_only(store):
    row = leaderboard([store]).iloc[0]
    noise = ((0.80 + 0.60) / 2 + 0.50) / 2  # gaussian_noise (mean over its severities), shot_noise
    weather = (0.40 + 0.20) / 2  # fog
    bench = ((0.80 + 0.60) / 2 + 0.50 + (0.40 + 0.20) / 2) / 3  # 3 benchmark corruptions
    extra = (0.10 + 0.30 + 0.95) / 3
    assert math.isclose(row["corruptions_acc"], bench)
    assert math.isclose(row["corruptions_noise_acc"], noise)
    assert math.isclose(row["corruptions_weather_acc"], weather)
    assert math.isclose(row["extra_corruptions_acc"], extra)
    assert "corruptions_extra_acc" not in row.index  # extras are not a category of the benchmark
    assert math.isclose(row["clean_acc"], 0.90)
    md = format_leaderboard(leaderboard([store]), "md")
    assert "extra_corruptions_acc over the suite's extra corruptions" in md


def test_report_labels_the_extra_column(store, tmp_path):
    html = robench.write_report(store, tmp_path / "rep").read_text()
    assert "extra corruptions (not in mean/mCE)" in html
    assert "enter neither the corruption mean nor mCE" in html


def _evaluate(path, label: str, sha: str):
    synthetic_store(path, {label: {"sha": sha, "cells": [(clean(), 0.5)]}}, n=N).close()


def test_three_weights_of_one_label_are_three_rows(tmp_path):
    """User-code models: shas share the 'weights:' prefix, and two of them even share 8 hex digits."""
    shas = ["weights:" + "1234abcd" + "0" * 56, "weights:" + "1234abcd" + "f" * 56, "weights:" + "9" * 64]
    for sha in shas:
        _evaluate(tmp_path / "s", "mine", sha)
    lb = leaderboard([tmp_path / "s"])
    assert len(lb) == 3
    labels = sorted(lb["model"])
    assert labels[0] == "mine"  # the latest keeps the label
    tags = [lab.split("#", 1)[1] for lab in labels[1:]]
    assert all(re.fullmatch(r"[0-9a-f]{12}", t) for t in tags), tags  # 8 hex digits were not enough
    assert sorted(tags) == ["1234abcd0000", "1234abcdffff"]


def test_weights_tags_are_distinct_hex():
    tags = weights_tags(["weights:abcdef0123", "abcdef0199", "random-init-seed0", "sha-x:abcdef0123"])
    assert len(set(tags.values())) == 4
    assert tags["random-init-seed0"] == "random-init"
    assert tags["weights:abcdef0123"] == "abcdef0123"  # shorter than 8 after the prefix: the whole body
    assert weights_tags(["weights:" + "a" * 64])["weights:" + "a" * 64] == "a" * 8
    two = weights_tags(["random-init-seed0", "random-init-seed1"])
    assert two == {"random-init-seed0": "random-init-seed0", "random-init-seed1": "random-init-seed1"}


@pytest.mark.parametrize("bad", [12345, None, 3.5, [1, 2], []])
def test_api_leaderboard_rejects_non_paths(bad):
    with pytest.raises(RobenchError, match="results must be a results directory"):
        robench.leaderboard(bad)


def test_report_package_is_not_callable_and_api_names_do_not_collide():
    import robench.report as pkg

    assert not callable(pkg)
    assert type(pkg).__name__ == "module"
    assert robench.write_report.__module__ == "robench.report.api"
    assert "write_report" in robench.__all__ and "report" not in robench.__all__


def test_api_leaderboard_of_a_frame_keeps_extras_apart(store):
    from robench.run.store import Store

    df = Store(store, readonly=True).results()
    lb = robench.leaderboard(df)
    assert math.isclose(lb.iloc[0]["extra_corruptions_acc"], (0.10 + 0.30 + 0.95) / 3)
    assert isinstance(lb, pd.DataFrame)


def test_eval_table_keeps_extra_corruptions_out_of_the_corruption_mean():
    from robench.run import summarize

    rows = [dict(model="m", checkpoint_sha256="ab" * 32, threat="clean", n=10, value=0.9, ci_low=0.5, ci_high=1.0),
            dict(model="m", checkpoint_sha256="ab" * 32, threat="corruption", category="noise", n=10, value=0.6),
            dict(model="m", checkpoint_sha256="ab" * 32, threat="corruption", category="blur", n=10, value=0.4),
            dict(model="m", checkpoint_sha256="ab" * 32, threat="corruption", category="extra", n=10, value=0.1)]
    s = summarize(pd.DataFrame(rows)).set_index("threat")
    assert s.loc["corruptions (mean of 2 cells)", "value"] == pytest.approx(0.5)  # (0.6 + 0.4) / 2, not 0.367
    assert s.loc["extra corruptions (mean of 1 cells)", "value"] == pytest.approx(0.1)
    assert set(s["weights"]) == {"abababab"}
