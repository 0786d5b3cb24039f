"""`robench report` (HTML + markdown twin) and `robench compare`."""

import base64
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from robench.cli import main
from robench.errors import RobenchError
from robench.report.compare import compare, format_comparison
from robench.report.render import report
from robench.report.screenshot import screenshot
from robench.report.testing import attack, clean, corruption, synthetic_store

VARIANTS = ("standard", "quest", "elliptical")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("rep") / "results"
    models = {}
    for j, v in enumerate(VARIANTS):
        cells = [(clean(), 0.95 - 0.01 * j)]
        cells += [(attack("pgd", e / 255), 0.9 - 0.1 * e + 0.04 * j) for e in (1, 2, 4)]
        cells += [(attack("fgsm", 2 / 255), 0.8 + 0.02 * j)]
        cells += [(corruption(c, s, cat), 0.9 - 0.1 * s + 0.01 * j)
                  for c, cat in (("gaussian_noise", "noise"), ("fog", "weather")) for s in (1, 3, 5)]
        models[f"demo-{v}"] = {"variant": v, "cells": cells}
    diag = pd.DataFrame([{"model": f"demo-{v}", "dataset": "digits", "corruption": None, "attack": None, "layer": i,
                          "head": h, "stat": st, "value": val * (1 + j / 10)}
                         for j, v in enumerate(VARIANTS) for i in range(3) for h in range(2)
                         for st, val in (("collapse_cos", 0.2 + 0.1 * i), ("attn_entropy_mean", 3 - 0.3 * i))])
    flags = {"demo-quest": [{"flag": "fgsm_beats_pgd", "message": "FGSM below PGD", "cells": [attack("pgd", 2 / 255)]}]}
    synthetic_store(path, models, n=300, flags=flags, diagnostics=diag)
    return path


@pytest.fixture(scope="module")
def rendered(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("rendered")
    return out, report([store], out, baseline="demo-standard")


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.h2, self._in_h2, self.tables, self.external = [], [], False, 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag in ("script", "link") or (tag == "img" and not a.get("src", "").startswith("data:")):
            self.external.append(tag)
        self._in_h2 = tag == "h2"
        self.tables += tag == "table"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data.strip())
            self._in_h2 = False


def test_report_html_and_markdown(rendered):
    out, path = rendered
    text = path.read_text()
    page = Page()
    page.feed(text)
    page.close()
    assert page.external == [] and "http" not in text.replace("http-equiv", "")  # self-contained, no network
    assert page.h2 == ["Leaderboard", "Adversarial robustness", "Corruptions", "Paired comparison vs demo-standard",
                       "Sanity flags", "Attention diagnostics", "Provenance"]
    # robust-vs-eps, acc-vs-severity, error heatmap, paired differences, diagnostics
    assert len(page.imgs) == 5
    # the page title is the report's, not the error heatmap's (a local variable once shadowed it)
    assert "<title>robench report</title>" in text
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "FGSM below PGD" in text and "pgd Linf ε=2/255" in text  # flag with its cell
    assert "sha-demo-quest"[:16] in text  # provenance: checkpoint hashes
    md = (out / "report.md").read_text()
    figs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert len(figs) == 5 and all((out / f).is_file() for f in figs)
    assert "| model |" in md and "## Paired comparison vs demo-standard" in md


def test_report_omits_empty_sections(tmp_path):
    synthetic_store(tmp_path / "s", {"m": {"cells": [(clean(), 0.9)]}}, n=50)
    text = report([tmp_path / "s"], tmp_path / "r").read_text()
    assert "No attack cells" in text and "No corruption cells" in text and "No sanity flags" in text
    assert "pass --baseline MODEL" in text and "No attention diagnostics" in text
    assert "<img" not in text
    with pytest.raises(RobenchError, match="no model 'nobody'"):
        report([tmp_path / "s"], tmp_path / "r", baseline="nobody")


@pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed")
def test_report_screenshot_not_blank(rendered, tmp_path):
    path = rendered[1]
    shot = screenshot(path, tmp_path / "shot.png", width=1280, height=2000)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] == 2000 and img.shape[1] == 1280
    # content, not a blank page: a good share of non-white pixels and many distinct colours (figures)
    nonwhite = (img < 0.95).any(axis=-1).mean()
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert nonwhite > 0.03 and colours > 50


def test_compare_paired(store, tmp_path, capsys):
    df = compare("demo-standard", "demo-elliptical", store)
    assert df.attrs["a"] == "demo-standard" and len(df) == 11
    pgd4 = df.set_index("cell").loc["pgd Linf ε=4/255"]
    assert pgd4["diff"] == pytest.approx(0.08, abs=1e-9) and pgd4["test"] == "mcnemar"
    assert pgd4["ci_low"] < 0.08 < pgd4["ci_high"] and bool(pgd4["significant"])
    md = format_comparison(df, md=True)
    assert md.startswith("### robench compare: demo-elliptical vs demo-standard") and "| clean |" in md
    # a results directory holding one model, against LABEL@DIR
    one = synthetic_store(tmp_path / "one", {"demo-standard": {"cells": [(clean(), 0.9)]}}, n=300)
    df = compare(f"demo-standard@{store}", str(tmp_path / "one"))
    assert len(df) == 1 and df.iloc[0]["cell"] == "clean" and one is not None
    with pytest.raises(RobenchError, match="no model 'demo-qest'.*did you mean"):
        compare("demo-standard", "demo-qest", store)
    with pytest.raises(SystemExit) as e:
        main(["compare", "demo-standard", "demo-quest", "--store", str(store), "--md"])
    assert e.value.code == 0 and "| dataset | cell |" in capsys.readouterr().out


def test_cli_report(store, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(store), "--out", str(tmp_path / "r")])
    assert e.value.code == 0 and (tmp_path / "r" / "report.html").is_file()
    assert "report.html" in capsys.readouterr().out


def test_screenshot_without_chromium_is_refused_before_the_report(store, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no chromium, no google-chrome
    code, out, err = run_cli("report", store, "--out", tmp_path / "r", "--screenshot", tmp_path / "s.png")
    assert code == 2 and err.startswith("robench: error: a screenshot needs a headless Chromium"), err
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.png").exists()


def test_report_of_a_store_file_defaults_beside_it(store, tmp_path, run_cli):
    """A store given as its .sqlite file: the default report directory is beside it (not inside the file)."""
    import shutil as sh
    import sqlite3

    db = sqlite3.connect(store / "robench.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the fixture's writer may still be open: copy a whole file
    db.close()
    sh.copy(store / "robench.sqlite", tmp_path / "copy.sqlite")
    code, out, err = run_cli("report", tmp_path / "copy.sqlite")
    assert code == 0, err
    assert (tmp_path / "report" / "report.html").is_file()


@pytest.mark.parametrize("command", ["check", "export", "eval", "leaderboard", "report", "inspect", "demo"])
def test_help_shows_no_bool_metavar(run_cli, command):
    code, out, err = run_cli(command, "--help")
    assert code == 0 and "--help" in out
    assert "<bool>" not in out and "BOOLEAN" not in out
