"""FMN (robench.attack.fmn): exactness against the closed-form minimal distance of a linear classifier, the core's
checks for a minimum-norm kind, bad inputs, batch-size independence, agreement with foolbox's FMN."""

import math

import pytest
import torch

from robench.attack import AttackInvariantError, make_spec, run_attack
from robench.attack.base import lp_norm
from robench.attack.fmn import project_l1
from robench.errors import RobenchError

DUAL = {"L2": 2, "Linf": 1, "L1": math.inf}


class Linear(torch.nn.Module):
    def __init__(self, W, b):
        super().__init__()
        self.l = torch.nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            self.l.weight.copy_(W)
            self.l.bias.copy_(b)

    def forward(self, x):
        return self.l(x.flatten(1))


def linear_problem(norm, B=200, d=48, K=4, seed=0, equal=True):
    """A linear classifier on [0,1]^d whose decision boundaries pass close to x (margins small against the box).
    equal: rows of W on disjoint supports with entries ±1, so ‖w_y − w_j‖ is the same for every pair and the
    nearest boundary is the runner-up class's (FMN, a local method, follows the runner-up logit); else W Gaussian.
    Returns (model, x, y, exact minimal distance, its minimiser inside the box, distance to the runner-up's
    boundary)."""
    g = torch.Generator().manual_seed(seed)
    if equal:
        W = torch.zeros(K, d)
        for j in range(K):
            blk = slice(j * (d // K), (j + 1) * (d // K))
            W[j, blk] = torch.randint(0, 2, (d // K,), generator=g).float() * 2 - 1
    else:
        W = torch.randn(K, d, generator=g)
    x = 0.5 + 0.2 * (torch.rand(B, 1, 1, d, generator=g) - 0.5)
    b = -(W @ torch.full((d,), 0.5)) + 0.3 * torch.randn(K, generator=g)
    m = Linear(W, b).eval()
    with torch.no_grad():
        z = m(x)
    y = z.argmax(1)
    exact = torch.full((B,), math.inf, dtype=torch.float64)
    inside = torch.ones(B, dtype=torch.bool)
    runner_up = z.scatter(1, y[:, None], -math.inf).argmax(1)
    to_runner_up = torch.zeros(B, dtype=torch.float64)
    x64, z64, W64 = x.flatten(1).double(), z.double(), W.double()
    for j in range(K):
        dw = W64[y] - W64[j]
        dist = (z64.gather(1, y[:, None])[:, 0] - z64[:, j]) / dw.norm(p=DUAL[norm], dim=1)
        dist[y == j] = math.inf
        # the minimiser of the half-space {f_j >= f_y}: check it stays in the box
        if norm == "L2":
            step = -dist[:, None] * dw / dw.norm(dim=1, keepdim=True)
        elif norm == "Linf":
            step = -dist[:, None] * dw.sign()
        else:
            k = dw.abs().argmax(1)
            step = torch.zeros_like(dw)
            step[torch.arange(B), k] = -dist * dw[torch.arange(B), k].sign()
        xm = x64 + step.nan_to_num(0, 0, 0)
        ok = (xm >= 0).all(1) & (xm <= 1).all(1)
        to_runner_up = torch.where(runner_up == j, dist, to_runner_up)
        closer = dist < exact
        inside = torch.where(closer, ok, inside)
        exact = torch.minimum(exact, dist)
    return m, x, y, exact, inside, to_runner_up


@pytest.mark.parametrize("early_exit", [False, True])
@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_fmn_matches_closed_form_on_linear_model(norm, early_exit):
    m, x, y, exact, inside, _ = linear_problem(norm)
    assert inside.float().mean() > 0.9  # the problem is what the closed form assumes
    table = {"patience": 10, "rtol": 0.01} if early_exit else {}  # the published schedule (the suites'), or early exit
    res = run_attack(m, x, y, make_spec("fmn", norm=norm, **table), list(range(len(y))))
    e, ex = res.eps_star[inside], exact[inside]
    rel = (e - ex).abs() / ex
    tol = 0.05 if early_exit else 0.01  # early exit (rtol 1 %) stops up to a few % above the minimum
    assert (rel <= tol).float().mean() >= 0.99, (norm, float(rel.median()), float(rel.max()))
    assert (e >= ex * (1 - 1e-3) - 1e-6).all()  # never below the true minimum (fp32 logits: 1e-3)
    assert not res.robust.any()  # every sample has an adversarial within the box


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_fmn_general_linear_model_reaches_runner_up_boundary(norm):
    """Gaussian W: the nearest boundary need not be the runner-up class's; FMN finds the latter (closed form too)
    and never reports less than the exact minimum."""
    m, x, y, exact, inside, to_ru = linear_problem(norm, equal=False)
    res = run_attack(m, x, y, make_spec("fmn", norm=norm), list(range(len(y))))
    e = res.eps_star[inside]
    assert (e >= exact[inside] * (1 - 1e-3) - 1e-6).all()
    assert (((e - to_ru[inside]).abs() / to_ru[inside]) <= 0.01).float().mean() >= 0.95


def test_eps_star_zero_for_clean_misclassified_and_inf_when_none_found():
    m, x, y, exact, _, _ = linear_problem("Linf", B=20)
    y2 = y.clone()
    y2[:3] = (y[:3] + 1) % 4  # clean-misclassified: eps* = 0
    res = run_attack(m, x, y2, make_spec("fmn", norm="Linf", steps=1), list(range(20)))
    assert (res.eps_star[:3] == 0).all() and not res.robust[0, :3].any()
    # one step cannot reach the boundary: the sample stays robust with eps* = inf, counted as robust
    assert torch.isinf(res.eps_star[3:]).any()
    assert torch.equal(res.robust[0], torch.isinf(res.eps_star))


def test_returned_images_checked_against_eps_star(monkeypatch):
    import robench.attack.fmn as fmn

    m, x, y, _, _, _ = linear_problem("L2", B=8)

    def lying(f, x, labels, eps, spec, seeds, ctx):
        x_adv, info = orig(f, x, labels, eps, spec, seeds, ctx)
        return x_adv, {"eps_star": info["eps_star"] * 0.5}

    orig = fmn.attack_fmn
    from robench.attack.base import _KINDS
    import dataclasses
    monkeypatch.setitem(_KINDS, "fmn", dataclasses.replace(_KINDS["fmn"], attack=lying))
    with pytest.raises(AttackInvariantError, match="not the eps"):
        run_attack(m, x, y, make_spec("fmn", norm="L2"), list(range(8)))


@pytest.mark.parametrize("table, msg", [({"norm": "L3"}, "unknown norm"), ({"steps": 0}, "steps"),
                                        ({"eps": ["8/255"]}, "drop 'eps'"), ({"steps": -2}, "steps"),
                                        ({"alpha": [1]}, "alpha"), ({"rtol": 2}, "rtol"),
                                        ({"patience": -1}, "patience")])
def test_bad_fmn_tables(table, msg):
    with pytest.raises(RobenchError, match=msg):
        make_spec("fmn", **table)


def test_l1_projection_matches_sort_free_bisection():
    g = torch.Generator().manual_seed(1)
    d = torch.randn(50, 30, generator=g)
    eps = torch.rand(50, generator=g) * 5 + 0.1
    p = project_l1(d, eps)
    # reference: soft-threshold theta found by bisection so that sum(max(|d| - theta, 0)) = eps
    lo, hi = torch.zeros(50), d.abs().amax(1)
    for _ in range(100):
        mid = (lo + hi) / 2
        s = (d.abs() - mid[:, None]).clamp(min=0).sum(1)
        lo, hi = torch.where(s > eps, mid, lo), torch.where(s > eps, hi, mid)
    ref = (d.abs() - hi[:, None]).clamp(min=0) * d.sign()
    ref = torch.where((d.abs().sum(1) <= eps)[:, None], d, ref)
    assert torch.allclose(p, ref, atol=1e-5)


def test_same_eps_star_for_any_batch_split():
    m, x, y, _, _, _ = linear_problem("L2", B=21)
    spec = make_spec("fmn", norm="L2", steps=30, restarts=2)
    whole = run_attack(m, x, y, spec, list(range(21))).eps_star
    parts = torch.cat([run_attack(m, x[i:i + 7], y[i:i + 7], spec, list(range(i, i + 7))).eps_star
                       for i in range(0, 21, 7)])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_agrees_with_foolbox_fmn_on_demo_model():
    """foolbox 3.3.4's LInfFMNAttack (the reference, published defaults) on the same demo model and 64 digits:
    median eps* within 5 %, robust accuracy at the standard eps (8/255) and at 2/255, 4/255 within 2 pp."""
    fb = pytest.importorskip("foolbox")
    from robench.data.digits import digits_tensors
    from robench.zoo.registry import create_model

    m = create_model("demo-standard").eval()
    x, y, _ = digits_tensors("test")
    x, y = x[:64], y[:64]
    with torch.no_grad():
        ok = m(x).argmax(1) == y
    fmodel = fb.PyTorchModel(m, bounds=(0, 1))
    xa = fb.attacks.LInfFMNAttack(steps=100).run(fmodel, x[ok], y[ok])
    with torch.no_grad():
        broken = m(xa).argmax(1) != y[ok]
    ref = torch.full((64,), 0.0, dtype=torch.float64)
    ref[ok] = torch.where(broken, lp_norm(xa.double() - x[ok].double(), "Linf"), torch.tensor(math.inf).double())
    med = lambda e: float(e[e > 0].median())  # noqa: E731  (64 clean-correct or fewer: torch's lower median)
    for table in ({}, {"patience": 10, "rtol": 0.01}):  # published schedule (the shipped suites); early exit
        ours = run_attack(m, x, y, make_spec("fmn", norm="Linf", **table), list(range(64))).eps_star
        assert abs(med(ours) - med(ref)) <= 0.05 * med(ref), (table, med(ours), med(ref))
        for eps in (2 / 255, 4 / 255, 8 / 255):
            acc, acc_ref = float((ours > eps).double().mean()), float((ref > eps).double().mean())
            assert abs(acc - acc_ref) <= 0.02 + 1e-12, (table, eps, acc, acc_ref)
