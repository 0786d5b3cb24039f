"""Gradient-masking sanity flags: a masked toy model raises them, a plain one raises none."""

import torch
from torch import nn

from robench.attack import large_eps_probe, make_spec, run_attack, sanity_flags




class TemplateNet(nn.Module):
    """Linear template matcher on 3x8x8 images; `quantise` rounds the input to multiples of 1/4 first (a
    non-differentiable layer: the input gradient is exactly zero, a classic source of gradient masking)."""

    def __init__(self, templates, quantise):
        super().__init__()
        self.lin = nn.Linear(templates[0].numel(), len(templates))
        with torch.no_grad():
            s = torch.stack([t.flatten() for t in templates])
            self.lin.weight.copy_(s)
            self.lin.bias.copy_(-0.5 * s.sum(1))
        self.quantise = quantise

    def forward(self, x):
        if self.quantise:
            x = torch.round(x * 4) / 4
        return self.lin(x.flatten(1))


def toy_data(n=32, classes=4):
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (classes, 3, 8, 8), generator=g).float() * 2 - 1
    y = torch.arange(n) % classes
    x = (0.5 + 0.2 * signs[y] + 0.03 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return signs, x, y


def evaluate(model, x, y):
    specs = [make_spec("fgsm", eps=(1 / 255, 4 / 255, 16 / 255), steps=1, step_size="1*eps",
                        random_start=False),
             make_spec("pgd", eps=(1 / 255, 4 / 255, 16 / 255), steps=5),
             large_eps_probe("Linf", steps=5)]
    seeds = list(range(len(x)))
    with torch.no_grad():
        clean_acc = (model(x).argmax(1) == y).float().mean().item()
    rows = []
    for spec in specs:
        res = run_attack(model, x, y, spec, seeds)
        for k, e in enumerate(spec.eps):
            rows.append({"attack": spec.name, "kind": spec.kind, "norm": spec.norm, "eps": e, "n": len(x),
                         "robust_acc": res.robust[k].float().mean().item(),
                         "zero_grad_frac": res.zero_grad.float().mean().item()})
    return rows, clean_acc


def test_masked_model_raises_masking_flags_plain_model_none():
    signs, x, y = toy_data()
    plain = TemplateNet(signs, quantise=False).eval()
    rows, clean = evaluate(plain, x, y)
    assert clean == 1.0
    assert sanity_flags(rows, clean) == []
    assert [r["robust_acc"] for r in rows if r["attack"] == "probe-large-eps"] == [0.0]

    masked = TemplateNet(signs, quantise=True).eval()
    rows, clean = evaluate(masked, x, y)
    assert clean == 1.0
    flags = {f["flag"]: f for f in sanity_flags(rows, clean)}
    assert {"zero-grad", "large-eps-robust"} <= set(flags)
    assert "probe-large-eps Linf 64/255" in flags["large-eps-robust"]["cells"]
    assert all(isinstance(f["message"], str) and "\n" not in f["message"] for f in flags.values())


def row(attack, eps, acc, kind=None, **kw):
    return {"attack": attack, "kind": kind, "norm": "Linf", "eps": eps, "robust_acc": acc, "n": 1000,
            "zero_grad_frac": 0.0, **kw}


def test_each_flag_on_synthetic_rows():
    ok = [row("fgsm", 1 / 255, 0.5), row("fgsm", 4 / 255, 0.2), row("pgd", 1 / 255, 0.4), row("pgd", 4 / 255, 0.1)]
    assert sanity_flags(ok, 0.8) == []
    f = sanity_flags([row("pgd", 1 / 255, 0.3), row("pgd", 4 / 255, 0.4)], 0.8)
    assert [x["flag"] for x in f] == ["non-monotone"] and f[0]["cells"] == ["pgd Linf 1/255", "pgd Linf 4/255"]
    f = sanity_flags([row("fgsm", 2 / 255, 0.3), row("pgd", 2 / 255, 0.5)], 0.8)
    assert [x["flag"] for x in f] == ["pgd-weaker-than-fgsm"]
    assert sanity_flags([row("fgsm", 2 / 255, 0.3), row("pgd", 2 / 255, 0.305)], 0.8) == []  # within noise
    aa = row("aa", 4 / 255, 0.2, kind="autoattack",
             acc_after={"clean": 0.8, "apgd-ce": 0.3, "apgd-t": 0.28, "fab-t": 0.28, "square": 0.2})
    assert [x["flag"] for x in sanity_flags([aa], 0.8)] == ["square-beats-whitebox"]
    aa["acc_after"]["square"] = 0.279
    assert sanity_flags([aa], 0.8) == []
    assert [x["flag"] for x in sanity_flags([row("pgd", 4 / 255, 0.9)], 0.8)] == ["robust-above-clean"]
