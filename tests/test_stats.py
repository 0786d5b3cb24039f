"""robench.report.stats against hand-computed values, published examples and scipy."""

import math

import numpy as np
import pytest
from scipy import stats as ss

from robench.report.stats import (AlexNetTable, corruption_error, corruption_summary, mcnemar_exact,
                                  paired_difference, relative_corruption_error, two_proportion_test,
                                  unpaired_difference, wilson)


def test_wilson_hand_values():
    # 0/10: upper = z^2 / (n + z^2)
    z2 = 1.959963984540054 ** 2
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(z2 / (10 + z2), abs=1e-12)
    lo, hi = wilson(5, 10)
    assert lo + hi == pytest.approx(1.0) and lo == pytest.approx(0.236593, abs=1e-6)
    assert all(math.isnan(x) for x in wilson(0, 0))


@pytest.mark.parametrize("b,c,expected", [(0, 5, 2 / 32), (1, 4, 2 * 6 / 32), (5, 0, 2 / 32), (3, 3, 1.0),
                                          (0, 0, 1.0), (12, 2, 2 * (1 + 14 + 91) / 2 ** 14)])
def test_mcnemar_exact_hand_values(b, c, expected):
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("b,c", [(7, 19), (40, 22), (300, 250), (1, 9)])
def test_mcnemar_matches_scipy_binomtest(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(ss.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact(b, c, "greater") == pytest.approx(
        ss.binomtest(b, b + c, 0.5, alternative="greater").pvalue, rel=1e-9)
    assert mcnemar_exact(b, c, "less") == pytest.approx(
        ss.binomtest(b, b + c, 0.5, alternative="less").pvalue, rel=1e-9)


def test_mcnemar_one_sided_hand_value():
    assert mcnemar_exact(5, 0, "greater") == pytest.approx(1 / 32)
    assert mcnemar_exact(5, 0, "less") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mcnemar_exact(1, 2, "bigger")


def _pairs(both, b, c, d):
    a = [1] * both + [1] * b + [0] * c + [0] * d
    bb = [1] * both + [0] * b + [1] * c + [0] * d
    return a, bb


def test_paired_difference_newcombe_published_example():
    # Newcombe (1998), Stat. Med. 17:2635, example (a): a=36, b=12, c=2, d=0 (n=50); p1 - p2 = 0.2 and his
    # method 10 interval is 0.0569 to 0.3404. Our diff is B - A, so the interval is mirrored.
    a, b = _pairs(36, 12, 2, 0)
    d = paired_difference(a, b)
    assert (d.n, d.b, d.c) == (50, 12, 2)
    assert d.acc_a == pytest.approx(0.96) and d.acc_b == pytest.approx(0.76)
    assert d.diff == pytest.approx(-0.2)
    assert d.ci_low == pytest.approx(-0.3404, abs=5e-5) and d.ci_high == pytest.approx(-0.0569, abs=5e-5)
    assert d.p == pytest.approx(2 * (1 + 14 + 91) / 2 ** 14)


def test_paired_difference_identical_and_bounds():
    a = np.array([1, 0, 1, 1, 0, 1, 1, 1])
    d = paired_difference(a, a)
    assert d.diff == 0 and d.p == 1.0 and d.ci_low <= 0 <= d.ci_high
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = rng.integers(0, 2, 30), rng.integers(0, 2, 30)
        d = paired_difference(x, y)
        assert -1 <= d.ci_low <= d.diff <= d.ci_high <= 1
    # all discordant: phi = 0, each Wilson bound is z^2 / (n + z^2) from its proportion
    d = paired_difference([1] * 20, [0] * 20)
    z2 = 1.959963984540054 ** 2
    assert d.diff == -1 and d.ci_low == -1 and d.ci_high == pytest.approx(-1 + math.sqrt(2) * z2 / (20 + z2))
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])


def test_paired_interval_narrower_than_unpaired_for_correlated_models():
    # two models that agree on most samples: pairing must help
    a, b = _pairs(400, 10, 30, 60)
    paired = paired_difference(a, b)
    unpaired = unpaired_difference(sum(a), len(a), sum(b), len(b))
    assert paired.diff == pytest.approx(unpaired.diff)
    assert paired.ci_high - paired.ci_low < 0.6 * (unpaired.ci_high - unpaired.ci_low)


def test_two_proportion_hand_value_and_chi2():
    # 50/100 vs 40/100: pooled 0.45, se = sqrt(.45 * .55 * 2 / 100), z = 0.1 / se = 1.42134
    z = 0.1 / math.sqrt(0.45 * 0.55 * 0.02)
    assert z == pytest.approx(1.42134, abs=1e-5)
    p_one = two_proportion_test(50, 100, 40, 100, "greater")
    assert p_one == pytest.approx(0.07761, abs=1e-5)
    assert two_proportion_test(50, 100, 40, 100, "less") == pytest.approx(1 - p_one)
    chi2 = ss.chi2_contingency([[50, 50], [40, 60]], correction=False)
    assert two_proportion_test(50, 100, 40, 100) == pytest.approx(chi2[1], rel=1e-9)
    assert two_proportion_test(0, 10, 0, 10, "greater") == 1.0
    assert two_proportion_test(3, 0, 1, 10) == 1.0


def test_corruption_error_hand_values():
    errs = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert corruption_error(errs, 0.5) == pytest.approx(1.5 / 2.5)
    assert relative_corruption_error(errs, 0.05, 0.5, 0.435) == pytest.approx((1.5 - 0.25) / (5 * 0.065))
    with pytest.raises(ValueError):
        corruption_error(errs[:4], 0.5)


TABLE = AlexNetTable({"gaussian_noise": 0.8, "fog": 0.6}, clean_err=0.4)
CATS = {"gaussian_noise": "noise", "fog": "weather", "saturate": "extra"}


def _acc(drop_gn5=False):
    acc = {}
    for s in range(1, 6):
        acc[("gaussian_noise", s)] = 0.9 - 0.1 * s
        acc[("fog", s)] = 0.8 - 0.05 * s
        acc[("saturate", s)] = 0.3
    if drop_gn5:
        del acc[("gaussian_noise", 5)]
    return acc


def test_corruption_summary_full():
    s = corruption_summary(_acc(), CATS, clean_acc=0.95, alexnet=TABLE)
    gn_err = [0.2, 0.3, 0.4, 0.5, 0.6]  # 1 - (0.9 - 0.1 s)
    fog_err = [0.25, 0.3, 0.35, 0.4, 0.45]
    assert s.ce["gaussian_noise"] == pytest.approx(sum(gn_err) / (5 * 0.8))
    assert s.ce["fog"] == pytest.approx(sum(fog_err) / (5 * 0.6))
    assert s.mce == pytest.approx((2.0 / 4.0 + 1.75 / 3.0) / 2)
    rel_gn = sum(e - 0.05 for e in gn_err) / (5 * (0.8 - 0.4))
    rel_fog = sum(e - 0.05 for e in fog_err) / (5 * (0.6 - 0.4))
    assert s.rel_mce == pytest.approx((rel_gn + rel_fog) / 2)
    # extras: accuracy only, never in the benchmark mean or CE
    assert "saturate" not in s.ce and s.extra_acc == {"saturate": pytest.approx(0.3)}
    assert s.mean_acc == pytest.approx((0.6 + 0.65) / 2)
    assert s.category_acc == {"noise": pytest.approx(0.6), "weather": pytest.approx(0.65)}
    assert s.note == ""


def test_corruption_summary_partial_gives_no_mce():
    s = corruption_summary(_acc(drop_gn5=True), CATS, clean_acc=0.95, alexnet=TABLE)
    assert s.mce is None and s.rel_mce is None
    assert "gaussian_noise" in s.note and "fog" in s.ce and "gaussian_noise" not in s.ce
    s = corruption_summary(_acc(), CATS, clean_acc=0.95, alexnet=None)
    assert s.mce is None and "AlexNet" in s.note and s.mean_acc is not None
    s = corruption_summary(_acc(), CATS, clean_acc=None, alexnet=TABLE)
    assert s.mce is not None and s.rel_mce is None and "clean" in s.note


def test_alexnet_scores_100_against_itself():
    from robench.report.results import alexnet_table

    table = alexnet_table()
    if table is None:
        pytest.skip("no ImageNet-C suite with AlexNet errors")
    assert len(table.err) == 15 and table.clean_err == pytest.approx(0.435)
    acc = {(c, s): 1 - e for c, e in table.err.items() for s in range(1, 6)}
    s = corruption_summary(acc, {c: "noise" for c in table.err}, clean_acc=1 - table.clean_err, alexnet=table)
    assert s.mce == pytest.approx(1.0) and s.rel_mce == pytest.approx(1.0)
