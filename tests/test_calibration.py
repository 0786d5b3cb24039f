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
