"""Calibration metrics against references: torchmetrics' CalibrationError (l1, 15 bins) for ECE; ports of
Hendrycks' calib_err / aurra (calibration_tools.py of "Natural Adversarial Examples", copied by the Elliptical
Attention repository) written here as the oracle; scikit-learn's average_precision_score for AUPR."""

import numpy as np
import pytest
import torch

from robench.report import calibration as cal


# ---- oracles (ports of Hendrycks' calibration_tools.py) -------------------------------------------------------
def hendrycks_calib_err(confidence, correct, p="2", beta=100, all_bins=True):
    """calib_err as released. all_bins=True: the loop runs over every bin and under `beta` samples there is one
    bin (the released loop is `range(len(bins) - 1)`, i.e. it drops the last bin, and `bins[-1]` fails when
    len(confidence) < beta); all_bins=False is the released code verbatim."""
    idxs = np.argsort(confidence)
    confidence = confidence[idxs]
    correct = correct[idxs]
    bins = [[i * beta, (i + 1) * beta] for i in range(len(confidence) // beta)]
    if all_bins and not bins:
        bins = [[0, len(confidence)]]
    bins[-1] = [bins[-1][0], len(confidence)]
    cerr = 0
    total_examples = len(confidence)
    for i in range(len(bins) if all_bins else len(bins) - 1):
        bin_confidence = confidence[bins[i][0]:bins[i][1]]
        bin_correct = correct[bins[i][0]:bins[i][1]]
        num_examples_in_bin = len(bin_confidence)
        if num_examples_in_bin > 0:
            difference = np.abs(np.nanmean(bin_confidence) - np.nanmean(bin_correct))
            cerr += num_examples_in_bin / total_examples * np.square(difference)
    return np.sqrt(cerr)


def hendrycks_aurra(confidence, correct):
    conf_ranks = np.argsort(confidence)[::-1]  # indices from greatest to least confidence
    rra_curve = np.cumsum(np.asarray(correct)[conf_ranks])
    rra_curve = rra_curve / np.arange(1, len(rra_curve) + 1)  # accuracy at each response rate
    return np.mean(rra_curve)


def torchmetrics_ece(conf, correct):
    tm = pytest.importorskip("torchmetrics.classification")
    m = tm.CalibrationError(task="binary", n_bins=15, norm="l1")
    return float(m(torch.as_tensor(conf, dtype=torch.float32), torch.as_tensor(correct, dtype=torch.long)))


def cases():
    rng = np.random.default_rng(0)
    out = {}
    for n in (1, 7, 99, 100, 101, 250, 1000):
        conf = rng.uniform(0, 1, n).astype(np.float32).astype(np.float64)
        out[f"random{n}"] = (conf, (rng.uniform(size=n) < conf).astype(float))
    n = 300
    conf = rng.uniform(0.2, 1, n).astype(np.float32).astype(np.float64)
    out["all_correct"] = (conf, np.ones(n))
    out["all_wrong"] = (conf, np.zeros(n))
    ties = rng.choice(np.float32([0.2, 0.5, 0.9, 1.0, 1 / 15, 2 / 15]), n).astype(np.float64)  # incl. bin edges
    out["ties"] = (ties, rng.integers(0, 2, n).astype(float))
    out["one_sample"] = (np.array([0.7]), np.array([1.0]))
    out["one_wrong"] = (np.array([0.3]), np.array([0.0]))
    return out


CASES = cases()


@pytest.mark.parametrize("name", list(CASES))
def test_ece_equals_torchmetrics(name):
    conf, correct = CASES[name]
    assert cal.ece(conf, correct) == pytest.approx(torchmetrics_ece(conf, correct), abs=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_rms_and_aurra_equal_hendrycks(name):
    conf, correct = CASES[name]
    assert cal.rms_calib(conf, correct) == pytest.approx(hendrycks_calib_err(conf, correct), abs=1e-6)
    assert cal.aurra(conf, correct) == pytest.approx(hendrycks_aurra(conf, correct), abs=1e-6)


def test_hand_computed_values():
    # one sample of confidence .7, correct: |1 - .7| in every metric's sense; AURRA = accuracy = 1
    assert cal.ece([0.7], [1]) == pytest.approx(0.3)
    assert cal.rms_calib([0.7], [1]) == pytest.approx(0.3)
    assert cal.aurra([0.7], [1]) == 1.0
    # two bins: {0.05 wrong, 0.05 right} -> |0.5 - 0.05| x 1/2 ; {0.95 right} x 2 -> |1 - .95| x 1/2
    assert cal.ece([0.05, 0.05, 0.95, 0.95], [0, 1, 1, 1]) == pytest.approx(0.45 / 2 + 0.05 / 2)
    # most confident right, least wrong: curve 1, 1, 2/3 -> mean 8/9
    assert cal.aurra([0.9, 0.8, 0.1], [1, 1, 0]) == pytest.approx(8 / 9)
    assert cal.nll([0.1, np.nan, 0.3]) == pytest.approx(0.2)
    assert np.isnan(cal.ece([], []))


def test_released_calib_err_differs_only_by_its_last_bin():
    conf, correct = CASES["random250"]
    # released code: bins [0,100) and [100,250); only the first counts
    first = np.sqrt(100 / 250 * (np.sort(conf)[:100].mean() - correct[np.argsort(conf)][:100].mean()) ** 2)
    assert hendrycks_calib_err(conf, correct, all_bins=False) == pytest.approx(first, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupr_equals_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    ind = rng.choice(np.float32([0.3, 0.6, 0.9, 0.99]), 40).astype(np.float64)  # ties across both groups
    ood = rng.choice(np.float32([0.3, 0.5, 0.6, 0.7]), 25).astype(np.float64)
    y = np.r_[np.ones(25), np.zeros(40)]
    want = skm.average_precision_score(y, -np.r_[ood, ind])
    assert cal.aupr(ind, ood) == pytest.approx(want, abs=1e-12)


def test_bootstrap_ci_brackets_the_estimate_and_is_deterministic():
    conf, correct = CASES["random1000"]
    lo, hi = cal.bootstrap_ci(conf, correct, "ece", n_boot=200, seed=3)
    assert lo < cal.ece(conf, correct) < hi
    assert (lo, hi) == cal.bootstrap_ci(conf, correct, "ece", n_boot=200, seed=3)


# ---- per-sample confidences in the store -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    from robench.run.engine import run_plan
    from robench.run.plan import ModelEntry, Plan

    out = tmp_path_factory.mktemp("conf")
    run_plan(Plan(models=[ModelEntry("demo-quest")], data="digits", limit=24, corruptions=["cifar10-c"],
                  corruption_names=["fog"], severities=[3], attacks=["demo-quick"],
                  attack_limit=16, device="cpu", sanity_probe=False, out=str(out), quiet=True))
    return out


def test_clean_confidence_is_the_softmax_of_the_model(demo_store):
    from robench.data.formats import load_clean
    from robench.run.plan import ModelEntry
    from robench.run.store import Store
    from robench.zoo.sources import build_model

    s = Store(demo_store, readonly=True)
    cells = s.cells()
    cid = int(cells.loc[cells["threat"] == "clean", "cell_id"].iloc[0])
    o = s.outcomes(cid)
    model = build_model(ModelEntry("demo-quest")).eval()
    data = load_clean("digits", model.info, limit=24)
    x = torch.stack([data.dataset[i][0] for i in range(24)])
    y = torch.tensor([data.dataset[i][1] for i in range(24)])
    with torch.no_grad():
        p = torch.softmax(model(x).double(), 1)
    assert o["pred"].tolist() == p.argmax(1).tolist()
    np.testing.assert_allclose(o["confidence"], p.max(1).values.numpy(), atol=1e-5)
    np.testing.assert_allclose(o["nll"], -torch.log(p[torch.arange(24), y]).numpy(), atol=1e-4)


def test_every_cell_records_the_confidence_of_its_final_prediction(demo_store):
    from robench.run.store import Store

    s = Store(demo_store, readonly=True)
    cells = s.cells()
    assert set(cells["threat"]) == {"clean", "corruption", "attack"}
    for cid, threat in zip(cells["cell_id"], cells["threat"]):
        o = s.outcomes(int(cid))
        assert o["confidence"].notna().all() and o["nll"].notna().all(), threat
        conf, p_true = o["confidence"].to_numpy(), np.exp(-o["nll"].to_numpy())
        assert ((conf > 0.1 - 1e-6) & (conf <= 1 + 1e-6)).all()  # an argmax of 10 classes: at least 1/10
        assert (conf + 1e-5 >= p_true).all()  # p(pred) >= p(true label): pred is the argmax
        if threat != "attack":
            hit = o["correct"] == 1  # correct: pred is the label, so p(pred) = p(label)
            np.testing.assert_allclose(conf[hit], p_true[hit], atol=1e-5)


def test_attack_confidence_of_unattacked_samples_is_the_clean_one(demo_store):
    from robench.run.store import Store

    s = Store(demo_store, readonly=True)
    cells = s.cells()
    clean = s.outcomes(int(cells.loc[cells["threat"] == "clean", "cell_id"].iloc[0])).set_index("sample")
    for cid in cells.loc[cells["threat"] == "attack", "cell_id"]:
        o = s.outcomes(int(cid)).set_index("sample")
        wrong = clean.loc[o.index, "correct"] == 0  # gated out: their final input is the clean image
        np.testing.assert_allclose(o.loc[wrong, "confidence"], clean.loc[o.index][wrong]["confidence"], atol=1e-5)
        assert (o["pred"] == clean.loc[o.index, "pred"])[wrong].all()


def test_leaderboard_shows_calibration_columns(demo_store):
    from robench.report.leaderboard import format_leaderboard, leaderboard
    from robench.run.store import Store

    board = leaderboard([demo_store])
    s = Store(demo_store, readonly=True)
    cells = s.cells()
    conf = cal.confidences(s)
    clean = conf[conf["cell_id"] == int(cells.loc[cells["threat"] == "clean", "cell_id"].iloc[0])]
    assert board["clean_ece"].iloc[0] == pytest.approx(torchmetrics_ece(clean["confidence"], clean["correct"]),
                                                       abs=1e-6)
    fog = conf[conf["cell_id"] == int(cells.loc[cells["threat"] == "corruption", "cell_id"].iloc[0])]
    assert board["corruptions_ece"].iloc[0] == pytest.approx(cal.ece(fog["confidence"], fog["correct"]))
    assert board["corruptions_rms_calib"].iloc[0] == pytest.approx(
        hendrycks_calib_err(fog["confidence"].to_numpy(), fog["correct"].to_numpy()), abs=1e-6)
    assert "ECE (15 bins)" in format_leaderboard(board, "md")


def _old_store(path):
    """A store as written before confidences: outcomes without the two columns."""
    import sqlite3

    from robench.report.testing import clean as clean_cell
    from robench.report.testing import synthetic_store

    synthetic_store(path, {"a": {"cells": [(clean_cell(), 0.8)]}}, n=20).close()
    db = sqlite3.connect(str(path / "robench.sqlite"))
    db.executescript("CREATE TABLE o2 (cell_id INTEGER, sample INTEGER, correct INTEGER, pred INTEGER, "
                     "PRIMARY KEY(cell_id, sample)) WITHOUT ROWID; INSERT INTO o2 SELECT cell_id, sample, correct, "
                     "pred FROM outcomes; DROP TABLE outcomes; ALTER TABLE o2 RENAME TO outcomes;")
    db.commit()
    db.close()


def test_a_store_written_before_still_reads(tmp_path):
    from robench.report.leaderboard import leaderboard
    from robench.run.export import per_sample
    from robench.run.store import Store

    _old_store(tmp_path)
    s = Store(tmp_path, readonly=True)
    assert "confidence" not in {r[1] for r in s.db.execute("PRAGMA table_info(outcomes)")}
    o = s.outcomes(1)
    assert len(o) == 20 and o["confidence"].isna().all() and o["nll"].isna().all()
    assert per_sample(s)["confidence"].isna().all()
    board = leaderboard([tmp_path])
    assert board["clean_acc"].iloc[0] == pytest.approx(0.8) and "clean_ece" not in board
    s.close()
    w = Store(tmp_path)  # a writer adds the columns; old rows keep NULL
    assert {"confidence", "nll"} <= {r[1] for r in w.db.execute("PRAGMA table_info(outcomes)")}
    assert w.outcomes(1)["confidence"].isna().all()


# ---- the calibration gate ---------------------------------------------------------------------------------------
def _conf_store(path, conf, correct):
    from robench.run.store import Store

    s = Store(path, create=True)
    run = s.start_run(seed=0)
    m = s.model_id(label="vit", name="demo-quest", variant="quest", arch="demo-vit", params=1, checkpoint=None,
                   checkpoint_sha256="x")
    c = s.cell_id(m, {"dataset": "digits", "threat": "clean", "protocol": "standard", "adaptive": False},
                  len(conf), 1, run)
    n = len(conf)
    s.write_chunk(0, {c: (list(range(n)), list(correct), [0] * n, list(conf), [0.5] * n)}, run)
    assert s.finish_cell(c)
    s.end_run(run)
    s.close()
    return path


def test_ece_replicates_equal_ece_of_each_resample():
    from robench.report.calib_check import ece_replicates

    conf, correct = CASES["ties"]
    idx = np.random.default_rng(0).integers(0, len(conf), size=(20, len(conf)))
    np.testing.assert_allclose(ece_replicates(conf, correct, idx), [cal.ece(conf[i], correct[i]) for i in idx],
                               atol=1e-12)


def _calibrated_and_overconfident(tmp_path, seed: int, n: int = 400):
    """A calibrated store (confidence = probability of being right) and the same outcomes 0.2 overconfident."""
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1, n)
    correct = (rng.uniform(size=n) < conf).astype(int)
    base = _conf_store(tmp_path / "base", conf, correct)
    worse = _conf_store(tmp_path / "worse", np.minimum(conf + 0.2, 1.0), correct)  # overconfident
    return conf, correct, base, worse


def test_calibration_gate(tmp_path):
    import subprocess
    import sys

    from robench.report.calib_check import check_calibration

    calibrated, correct, base, worse = _calibrated_and_overconfident(tmp_path, seed=0)
    df, code = check_calibration(base, worse, "ece")
    assert code == 1 and df["verdict"].tolist() == ["regression"] and df["p"].iloc[0] < 0.05
    assert df["current"].iloc[0] == pytest.approx(cal.ece(np.minimum(calibrated + 0.2, 1.0), correct))
    df, code = check_calibration(base, base, "ece")
    assert code == 0 and df["verdict"].tolist() == ["ok"] and df["delta_pp"].iloc[0] == 0
    df, code = check_calibration(worse, base, "rms_calib", n_boot=200)  # better now: never fails
    assert code == 0 and df["verdict"].tolist() == ["improved"]
    p = subprocess.run([sys.executable, "-m", "robench", "check", "--baseline", str(base), "--store", str(worse),
                        "--calibration", "ece"], capture_output=True, text=True)
    assert p.returncode == 1 and "calibration regressed" in p.stdout


def test_report_has_a_reliability_diagram_per_model(demo_store, tmp_path):
    from robench.report.render import report

    report([demo_store], tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Calibration" in md and (tmp_path / "rep" / "reliability.png").stat().st_size > 1000
    row = next(ln for ln in md.splitlines() if ln.startswith("| demo-quest |") and "ECE" not in ln
               and md.index("## Calibration") < md.index(ln))
    from robench.run.store import Store

    s = Store(demo_store, readonly=True)
    cells = s.cells()
    conf = cal.confidences(s)
    clean = conf[conf["cell_id"] == int(cells.loc[cells["threat"] == "clean", "cell_id"].iloc[0])]
    assert row.split("|")[2].strip() == f"{100 * torchmetrics_ece(clean['confidence'], clean['correct']):.2f}"


def test_calibration_gate_against_a_csv_value(tmp_path):
    from robench.errors import RobenchError
    from robench.report.calib_check import check_calibration
    from robench.run.export import export
    from robench.run.store import Store

    conf, correct, base, worse = _calibrated_and_overconfident(tmp_path, seed=1)
    csv = export(Store(base, readonly=True), tmp_path / "base.csv")
    with pytest.raises(RobenchError, match="no 'ece' column"):
        check_calibration(csv, worse, "ece")
    import pandas as pd

    df = pd.read_csv(csv)
    df["ece"] = cal.ece(conf, correct)  # the baseline's value, computed on its own confidences
    df.to_csv(csv, index=False)
    out, code = check_calibration(csv, worse, "ece")
    assert code == 1 and out["verdict"].tolist() == ["regression"]
    assert out["baseline"].iloc[0] == pytest.approx(cal.ece(conf, correct))
    out, code = check_calibration(csv, base, "ece")
    assert code == 0 and out["verdict"].tolist() == ["ok"]
