"""The gradient-obfuscation flag (robench.attack.sanity): an adaptive attack (gradients through a no_grad
statistic) that lowers robust accuracy below the default attack's. It fires on a model built to hide its
gradients and not on demo-standard; the vit suite runs the adaptive twin on elliptical variants only."""

import pytest
import torch
from torch import nn

from robench.attack import make_spec, run_attack, sanity_flags
from robench.zoo.attention import EllipticalAttention

pytest.importorskip("timm")


class HiddenStatistic(EllipticalAttention):
    """out = z − c·s(z) with s(z) = z computed under no_grad unless adaptive (the switch every elliptical layer
    has): the default gradient says slope 1, the function's slope is 1 − c. c = 3 hides the true direction; c = 0
    hides nothing (the adaptive and default gradients are the same)."""

    def __init__(self, c: float):
        nn.Module.__init__(self)
        self.c, self.grad_through_scale = c, False

    def forward(self, z):
        s = z if self.grad_through_scale else z.detach()
        return z - self.c * s


def hidden_model(c: float, inner: nn.Module | None = None):
    torch.manual_seed(0)
    inner = inner or nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    return nn.Sequential(inner, HiddenStatistic(c)).eval()


def _rows(model, x, y, eps, steps=10):
    seeds = list(range(len(y)))
    rows = []
    for adaptive in (False, True):
        spec = make_spec("pgd", name="pgd-adaptive" if adaptive else "pgd", eps=eps, steps=steps,
                         random_start=False, adaptive=adaptive)
        res = run_attack(model, x, y, spec, seeds)
        for k, e in enumerate(spec.eps):
            rows.append(dict(attack=spec.name, kind="pgd", norm="Linf", eps=e, n=len(y), adaptive=adaptive,
                             robust_acc=res.robust[k].float().mean().item(), zero_grad_frac=0.0))
    return rows


def test_gap_flag_closed_form():
    rows = [dict(attack="pgd", kind="pgd", norm="Linf", eps=4 / 255, n=100, robust_acc=0.60),
            dict(attack="pgd-strong", kind="pgd", norm="Linf", eps=4 / 255, n=100, robust_acc=0.55),
            dict(attack="pgd-adaptive", kind="pgd", norm="Linf", eps=4 / 255, n=100, robust_acc=0.30, adaptive=True),
            dict(attack="pgd-adaptive", kind="pgd", norm="Linf", eps=8 / 255, n=100, robust_acc=0.10, adaptive=True)]
    flags = {f["flag"]: f for f in sanity_flags(rows, clean_acc=0.9)}
    f = flags["gradient-obfuscation"]
    assert "lowers accuracy by 25.0 pp" in f["message"]  # against the strongest default twin (0.55), not 0.60
    assert f["cells"] == ["pgd-strong Linf 4/255", "pgd-adaptive Linf 4/255 adaptive"]
    rows[2]["robust_acc"] = 0.545  # within the 1-sample / 1 pp noise margin
    assert "gradient-obfuscation" not in {f["flag"] for f in sanity_flags(rows, clean_acc=0.9)}


def test_flag_fires_on_a_model_that_hides_its_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 3, 8, 8, generator=g)
    model = hidden_model(3.0)
    with torch.no_grad():
        y = model(x).argmax(1)
    rows = _rows(model, x, y, (8 / 255, 16 / 255))
    acc = {(r["adaptive"], round(r["eps"] * 255)): r["robust_acc"] for r in rows}
    assert acc[(True, 16)] < acc[(False, 16)] - 0.2, acc  # the default attack walks the wrong way
    flags = {f["flag"]: f for f in sanity_flags(rows, clean_acc=1.0)}
    assert "gradient-obfuscation" in flags, acc
    assert "adaptive attack lowers accuracy by" in flags["gradient-obfuscation"]["message"]


def test_flag_silent_on_demo_standard():
    """demo-standard with the adaptive switch wired in but nothing hidden (c = 0): the same gradients, no flag."""
    from robench.data.digits import digits_tensors
    from robench.zoo.registry import create_model

    model = hidden_model(0.0, inner=create_model("demo-standard").eval())
    x, y, _ = digits_tensors("test")
    rows = _rows(model, x[:48], y[:48], (2 / 255, 4 / 255), steps=5)
    acc = {(r["adaptive"], round(r["eps"] * 255)): r["robust_acc"] for r in rows}
    assert acc[(True, 2)] == acc[(False, 2)] and acc[(True, 4)] == acc[(False, 4)]
    assert "gradient-obfuscation" not in {f["flag"] for f in sanity_flags(rows, clean_acc=1.0)}


def test_adaptive_twin_planned_for_elliptical_variants_only():
    from robench.run.cells import has_no_grad_statistic
    from robench.zoo.demo import demo_info

    assert has_no_grad_statistic(demo_info("elliptical")) and has_no_grad_statistic(demo_info("elliptical-quest"))
    assert not has_no_grad_statistic(demo_info("standard")) and not has_no_grad_statistic(demo_info("quest"))
    assert has_no_grad_statistic(None)  # user code: the attack itself says if there is no such layer


HIDDEN_FILE = '''
import torch
from torch import nn

from robench.zoo.attention import EllipticalAttention


class Hidden(EllipticalAttention):
    def __init__(self):
        nn.Module.__init__(self)
        self.grad_through_scale = False

    def forward(self, z):
        s = z if self.grad_through_scale else z.detach()
        return z - 3.0 * s


def Net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10), Hidden())
'''


def test_flag_stored_and_reported_end_to_end(tmp_path, run_cli):
    """robench eval on user code that hides its gradients, with PGD and its adaptive twin: the flag is written
    by the post-run step, counted in the leaderboard and shown in the report."""
    from robench.run.store import Store

    (tmp_path / "hidden.py").write_text(HIDDEN_FILE)
    suite = tmp_path / "s.toml"
    suite.write_text('[[attack]]\nname = "pgd"\nkind = "pgd"\neps = ["16/255"]\nsteps = 5\nrandom_start = false\n'
                     '[[attack]]\nname = "pgd-adaptive"\nkind = "pgd"\neps = ["16/255"]\nsteps = 5\n'
                     'random_start = false\nadaptive = true\n')
    out = tmp_path / "res"
    code, _, err = run_cli("eval", "-m", f"{tmp_path / 'hidden.py'}:Net", "--data", "digits", "--limit", "200",
                           "--attack", suite, "--device", "cpu", "--out", out, "-q")
    assert code == 0, err
    res = Store(out).results()
    acc = dict(zip(res["attack"].fillna("clean"), res["value"]))
    assert acc["pgd-adaptive"] < acc["pgd"], acc
    flags = Store(out).flags()
    row = flags[flags["flag"] == "gradient-obfuscation"]
    assert len(row) == 1, flags
    gap = 100 * (acc["pgd"] - acc["pgd-adaptive"])
    assert f"lowers accuracy by {gap:.1f} pp" in row["message"].iloc[0]
    code, _, err = run_cli("report", out, "--out", tmp_path / "r")
    assert code == 0, err
    html = "".join(p.read_text() for p in (tmp_path / "r").rglob("*.html"))
    assert "gradient-obfuscation" in html and "adaptive attack lowers accuracy by" in html
