"""Robustness curves from minimum-norm attacks: robench.report.curves (hand-computed values), the engine's eps*
in the store (batch-size / shard invariance, consistency with PGD on the demo zoo), `robench curve`, bad input."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robench.report.curves import curve_points, curves, eps_star_samples, median_eps_star, paired_comparison
from robench.run import ModelEntry, Plan, Store, load_plan, run_plan

INF = math.inf
FMN_SUITE = 'name = "fmn-test"\n[[attack]]\nname = "fmn-linf"\nkind = "fmn"\nnorm = "Linf"\nsteps = 30\n'


def test_curve_points_by_hand():
    e = [0.0, 0.01, 0.02, 0.03, INF]  # one clean-misclassified, three broken, one never broken
    pts = curve_points(e, [0.005, 0.02, 1.0])
    assert [p["robust"] for p in pts] == [4, 2, 1]  # robust at eps iff eps* > eps (0.02 is broken at 0.02)
    assert pts[1]["robust_acc"] == pytest.approx(0.4)
    # Wilson 95% for 2/5 by hand: centre (0.4 + z²/10)/(1 + z²/5), half z·sqrt(0.24/5 + z²/100)/(1 + z²/5)
    z = 1.959963984540054
    c, h = (0.4 + z * z / 10) / (1 + z * z / 5), z * math.sqrt(0.24 / 5 + z * z / 100) / (1 + z * z / 5)
    assert pts[1]["ci_low"] == pytest.approx(c - h) and pts[1]["ci_high"] == pytest.approx(c + h)
    assert median_eps_star(e) == pytest.approx(0.025)  # over the 4 clean-correct: (0.02 + 0.03) / 2
    assert median_eps_star([0.0, 0.1, INF, INF]) == INF  # fewer than half broken
    assert math.isnan(median_eps_star([0.0, 0.0]))


def test_paired_comparison_matches_scipy_on_finite_and_ranks_inf_highest():
    from scipy.stats import wilcoxon

    a = [0.0, 0.1, 0.2, 0.3, 0.5, INF, INF, 0.25]
    b = [0.1, 0.05, 0.1, 0.35, 0.2, 0.4, INF, 0.05]
    s = pd.DataFrame({"model": ["A"] * 8 + ["B"] * 8, "sample": list(range(8)) * 2, "eps_star": a + b,
                      "attack": "fmn"})
    r = paired_comparison(s, "A", "B")
    assert r["n"] == 7  # sample 0: A misclassifies it
    # by hand: differences of samples 1..7 with inf -> a value above every finite one (1.0 keeps the ranks)
    d = [0.1 - 0.05, 0.2 - 0.1, 0.3 - 0.35, 0.5 - 0.2, 1.0 - 0.4, 0.0, 0.25 - 0.05]
    assert r["p_value"] == pytest.approx(wilcoxon(d, zero_method="wilcox").pvalue)
    assert (r["a_larger"], r["b_larger"]) == (5, 1)


def _plan(out, steps=30, **kw):
    suite = Path(out).parent / f"fmn-test-{steps}.toml"
    suite.write_text(FMN_SUITE.replace("steps = 30", f"steps = {steps}"))
    base = dict(models=[ModelEntry("demo-standard")], data="digits", limit=24, out=str(out), quiet=True,
                chunk_size=12, attacks=[str(suite), "pgd"], sanity_probe=False)
    base.update(kw)
    return Plan(**base)


def _eps_star(out) -> pd.DataFrame:
    return Store(out, readonly=True).query(
        "SELECT m.label, c.params_hash, e.sample, e.eps_star FROM eps_star e JOIN cells c USING(cell_id) "
        "JOIN models m USING(model_id) ORDER BY m.label, c.params_hash, e.sample")


@pytest.mark.slow
def test_engine_eps_star_batch_invariant_and_below_pgd(tmp_path):
    run_plan(_plan(tmp_path / "a", batch_size=7, steps=100))  # FMN's published 100 steps
    run_plan(_plan(tmp_path / "b", batch_size=64, steps=100))
    a, b = _eps_star(tmp_path / "a"), _eps_star(tmp_path / "b")
    assert len(a) == 24 and np.isfinite(a.eps_star).sum() > 12
    pd.testing.assert_frame_equal(a, b)
    # consistency: the curve (with PGD's breaks) <= PGD's robust accuracy at each PGD eps; FMN alone <= it + 2 pp
    # (or one sample of the 24)
    res = Store(tmp_path / "a").results()
    pgd = res[res.attack == "pgd"].set_index("eps").value
    c = curves(tmp_path / "a", eps=list(pgd.index)).set_index("eps")
    own = eps_star_samples(tmp_path / "a").own
    for eps, acc in pgd.items():
        assert c.robust_acc[eps] <= acc + 1e-12
        assert (own > eps).mean() <= acc + max(0.02, 1 / len(own)) + 1e-12, eps  # FMN alone: 2 pp or 1 sample
    # the clean cell agrees with eps* = 0 exactly on the clean-misclassified samples
    clean = Store(tmp_path / "a").outcomes(int(res[res.threat == "clean"].cell_id.iloc[0])).set_index("sample")
    assert ((a.set_index("sample").eps_star == 0) == (clean.correct == 0)).all()


def test_curve_cli_and_bad_inputs(tmp_path, run_cli):
    out = tmp_path / "s"
    (tmp_path / "fmn-test.toml").write_text(FMN_SUITE)
    run_plan(_plan(out, limit=8, attacks=[str(tmp_path / "fmn-test.toml")]))
    code, text, err = run_cli("curve", out, "--eps", "1/255,8/255")
    assert code == 0, err
    assert "median eps*" in text and "eps    8/255" in text
    s = eps_star_samples(out)
    assert f"({int((s.eps_star > 8 / 255).sum())}/8)" in text
    # leaderboard: median eps* over clean-correct samples, accuracy at the standard eps (8/255 for digits)
    from robench.report.leaderboard import leaderboard

    lb = leaderboard([out]).iloc[0]
    e = s.eps_star.to_numpy()
    assert lb["median_eps*"] == pytest.approx(float(np.median(e[e > 0])))
    assert lb["fmn-linf_acc@8/255"] == pytest.approx(float((e > 8 / 255).mean()))
    # per-sample export: each sample's eps* beside its verdict (robust iff no adversarial found: eps* = inf)
    from robench.run.export import per_sample

    ps = per_sample(Store(out, readonly=True))
    fm = ps[ps.attack == "fmn-linf"].sort_values("sample")
    assert fm.eps_star.tolist() == pytest.approx(s.own.tolist())
    assert (fm.correct.astype(bool) == np.isinf(fm.eps_star)).all() and ps[ps.attack != "fmn-linf"].eps_star.isna().all()
    # the HTML/markdown report: the curve figure and the median eps* table
    from robench.report.render import report

    report([out], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Robustness curves (minimum-norm attacks)" in md and (tmp_path / "rep" / "curves-digits-test.png").exists()
    assert f"{lb['median_eps*']:.4g}" in md
    # check: gate on median eps*
    run_plan(_plan(tmp_path / "s", limit=8, attacks=[str(tmp_path / "fmn-test.toml")]))  # resume: nothing new
    code, _, err = run_cli("export", out, "--out", tmp_path / "base.csv")
    med = float(np.median(e[e > 0]))
    code, text, err = run_cli("check", "--baseline", tmp_path / "base.csv", "--store", out, "--min-median-eps",
                              f"fmn-linf={med * 0.9}")
    assert code == 0 and "ok" in text, err
    code, text, _ = run_cli("check", "--baseline", tmp_path / "base.csv", "--store", out, "--min-median-eps",
                            f"fmn-linf={med * 1.1}")
    assert code == 1 and "FAIL" in text
    code, _, err = run_cli("check", "--baseline", tmp_path / "base.csv", "--store", out, "--min-median-eps", "fmn-l2=1")
    assert code == 2 and "fmn-l2" in err
    # an eps list on a min-norm kind, unknown norm, steps <= 0: one line, exit 2, nothing written
    for body, msg in [(FMN_SUITE + 'eps = ["8/255"]\n', "drop 'eps'"), (FMN_SUITE.replace("Linf", "L7"), "norm"),
                      (FMN_SUITE.replace("steps = 30", "steps = 0"), "steps")]:
        (tmp_path / "bad.toml").write_text(body)
        code, _, err = run_cli("eval", "--model", "demo-standard", "--data", "digits", "--limit", "4", "--attack",
                               tmp_path / "bad.toml", "--out", tmp_path / "bad")
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()
    code, _, err = run_cli("eval", "--model", "demo-standard", "--data", "digits", "--limit", "4", "--attack",
                           tmp_path / "fmn-test.toml", "--eps", "8/255", "--out", tmp_path / "bad")
    assert code == 2 and "minimum-norm" in err and not (tmp_path / "bad").exists()
    code, _, err = run_cli("curve", out, "--compare", "demo-standard")
    assert code == 2 and "exactly two" in err


@pytest.mark.slow
def test_torchrun_two_shards_same_eps_star(tmp_path):
    pytest.importorskip("torch.distributed.run")
    (tmp_path / "fmn-test.toml").write_text(FMN_SUITE)
    lines = ['data = "digits"', "limit = 16", "chunk_size = 8", f'attacks = ["{tmp_path / "fmn-test.toml"}"]',
             "sanity_probe = false", '[[models]]\nname = "demo-standard"']
    for name in ("single", "dist"):
        (tmp_path / f"{name}.toml").write_text("\n".join(lines[:5] + [f'out = "{tmp_path / name}"'] + lines[5:]))
    run_plan(load_plan(tmp_path / "single.toml"))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29700 + os.getpid() % 1000), "-m", "robench", "sweep", str(tmp_path / "dist.toml"), "-q"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    pd.testing.assert_frame_equal(_eps_star(tmp_path / "single"), _eps_star(tmp_path / "dist"))
