"""Patch-Fool (robench.attack.patch) and PGD with an attention loss (robench.attack.attention_pgd): the
perturbation stays on the chosen patches (and in the L∞ ball when mild), attention on the perturbed tokens rises,
k = all patches + mild bound is at least as strong as PGD, bad inputs are refused before any work."""

import dataclasses

import pytest
import torch

from robench.attack import AttackInvariantError, AttackKind, make_spec, register_kind, run_attack, unregister_kind
from robench.attack.attention_loss import attention_share, capture_attention, token_grid
from robench.attack.base import RunContext
from robench.attack.patch import attack_patch, choose_patches, patch_support
from robench.errors import RobenchError

pytest.importorskip("timm")


@pytest.fixture(scope="module")
def demo():
    from robench.data.digits import digits_tensors
    from robench.zoo.registry import create_model

    m = create_model("demo-standard").eval()
    x, y, _ = digits_tensors("test")
    return m, x[:48].float(), y[:48].long()


def test_perturbation_only_on_chosen_patches_and_in_the_ball(demo):
    m, x, y = demo
    x, y = x[:12], y[:12]
    seeds = list(range(100, 112))
    for mode, eps in (("mild", 8 / 255), ("sparse", 1.0)):
        spec = make_spec("patchfool", mode=mode, k=3, steps=5, **({"eps": (eps,)} if mode == "mild" else {}))
        grid = token_grid(m, x)
        assert grid == (4, 4, 8, 8, 1)
        chosen = choose_patches(m, x, spec, seeds, grid)
        assert chosen.sum(1).tolist() == [3] * 12
        x_adv, info = attack_patch(m, x, y, eps, spec, seeds, RunContext())
        outside = ~patch_support(chosen, grid, x.shape).bool().expand_as(x)
        assert torch.equal(x_adv[outside], x[outside])
        d = (x_adv - x).abs()
        assert d.amax() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
        assert d.amax() > 0  # it did perturb
        # a chosen patch is a 4x4 pixel square of the 8x8 grid: check one by hand
        b, p = 0, int(chosen[0].nonzero()[0])
        r, c = divmod(p, 8)
        assert torch.equal(info["support"][b, 0, 4 * r:4 * r + 4, 4 * c:4 * c + 4],
                           torch.ones(4, 4, dtype=torch.bool))
        res = run_attack(m, x, y, spec, seeds)  # the core checks the support itself
        assert res.robust.shape == (1, 12)


def test_attention_selection_picks_the_most_attended_patch(demo):
    m, x, _ = demo
    spec = make_spec("patchfool", mode="sparse", k=1, steps=1)
    chosen = choose_patches(m, x[:4], spec, [0, 1, 2, 3], token_grid(m, x))
    with torch.no_grad(), capture_attention(m) as probs:
        m(x[:4])
    received = sum(p[:, :, :, 1:].mean(dim=(1, 2)) for p in probs)  # by hand: mean over heads/queries, sum layers
    assert chosen.nonzero()[:, 1].tolist() == received.argmax(1).tolist()
    rnd = dataclasses.replace(spec, options=dataclasses.replace(spec.options, select="random"))
    a = choose_patches(m, x[:4], rnd, [5, 6, 7, 8], token_grid(m, x))
    b = choose_patches(m, x[2:4], rnd, [7, 8], token_grid(m, x))  # per-sample seeds: batch-independent
    assert torch.equal(a[2:], b)  # per-sample seeds: the same patches whatever the batch
    assert a.sum(1).tolist() == [1] * 4 and len(set(a.float().argmax(1).tolist())) > 1


def test_attention_on_perturbed_tokens_rises(demo):
    m, x, y = demo
    x, y = x[:16], y[:16]
    seeds = list(range(16))
    spec = make_spec("patchfool", mode="sparse", k=2, steps=20, attn_weight=20.0, select="random")
    grid = token_grid(m, x)
    chosen = choose_patches(m, x, spec, seeds, grid)
    tokens = torch.cat([torch.zeros(16, 1), chosen.float()], 1)
    x_adv, _ = attack_patch(m, x, y, 1.0, spec, seeds, RunContext())

    def share(z):
        with torch.no_grad(), capture_attention(m) as probs:
            m(z)
        return attention_share(probs, tokens)

    before, after = share(x), share(x_adv)
    assert (after > before).float().mean() >= 0.75, (before, after)
    assert after.mean() > 1.5 * before.mean()


def test_all_patches_mild_is_at_least_as_strong_as_pgd(demo):
    m, x, y = demo
    seeds = list(range(len(y)))
    eps, steps = 2 / 255, 5
    pgd = make_spec("pgd", eps=(eps,), steps=steps, step_size="2.5*eps/steps", random_start=False)
    pf = make_spec("patchfool", mode="mild", eps=(eps,), k=64, steps=steps, step_size="2.5*eps/steps")
    r_pgd = run_attack(m, x, y, pgd, seeds).robust.float().mean().item()
    r_pf = run_attack(m, x, y, pf, seeds).robust.float().mean().item()
    assert r_pf <= r_pgd + 0.02, (r_pf, r_pgd)
    # with no attention term it is exactly PGD (same start, steps, step size, any-iterate success rule)
    pf0 = make_spec("patchfool", mode="mild", eps=(eps,), k=64, steps=steps, attn_weight=0)
    assert run_attack(m, x, y, pf0, seeds).robust.float().mean().item() == r_pgd
    pa0 = make_spec("pgd-attention", eps=(eps,), steps=steps, attn_weight=0, random_start=False)
    assert run_attack(m, x, y, pa0, seeds).robust.float().mean().item() == r_pgd


def test_core_refuses_a_perturbation_outside_the_support(demo):
    m, x, y = demo

    def leaky(f, x, labels, eps, spec, seeds, ctx):
        sup = torch.zeros_like(x[:, :1], dtype=torch.bool)
        sup[..., :4, :4] = True
        return (x + eps).clamp(0, 1), {"support": sup}

    register_kind(AttackKind("leaky-test", parse=lambda t, c, w: __import__("robench.attack.spec").attack.spec
                             .AttackSpec(**c), attack=leaky, label=lambda s: "leaky", order=99))
    try:
        with pytest.raises(AttackInvariantError, match="not zero outside the attacked patches"):
            run_attack(m, x[:4], y[:4], make_spec("leaky-test", eps=(0.1,)), [0, 1, 2, 3])
    finally:
        unregister_kind("leaky-test")


def test_bad_specs_one_line_errors():
    for table, msg in [({"mode": "sparse", "eps": ["8/255"]}, "unbounded within"),
                       ({"mode": "mild", "norm": "L2"}, "L∞"), ({"k": 0}, "k must be"),
                       ({"mode": "wild"}, "unknown Patch-Fool mode"), ({"layers": [-1]}, "layers must be"),
                       ({"attn_weight": -1}, "attn_weight"), ({"random_start": True}, "mild")]:
        with pytest.raises(RobenchError, match=msg):
            make_spec("patchfool", **table)
    for table, msg in [({"norm": "L2"}, "L∞ only"), ({"layers": "all"}, "layer indices"), ({"attn_weight": "x"}, "parse")]:
        with pytest.raises(RobenchError, match=msg):
            make_spec("pgd-attention", **table)


def test_cli_non_vit_and_too_many_patches_exit_2_nothing_written(tmp_path, run_cli):
    net = tmp_path / "cnn.py"
    net.write_text("import torch\n\n\ndef Net():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), "
                   "torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))\n")
    big = tmp_path / "big.toml"
    big.write_text('[[attack]]\nname = "pf"\nkind = "patchfool"\nk = 65\nsteps = 1\n')
    small = tmp_path / "small.toml"
    small.write_text('[[attack]]\nname = "pf"\nkind = "patchfool"\nk = 1\nsteps = 1\n')
    cases = [(["-m", "demo-standard", "--attack", big], r"k = 65 patches but model demo-standard has only 64"),
             (["-m", f"{net}:Net", "--attack", small], r"no timm patch embedding .* not a ViT")]
    for args, msg in cases:
        out = tmp_path / "out"
        code, _, err = run_cli("eval", "--device", "cpu", "--data", "digits", "--limit", "4", "--out", out, "-q",
                               *args)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        import re
        assert re.search(msg, err), err
        assert not out.exists()


def test_vit_suite_end_to_end_cells_in_leaderboard_and_report(tmp_path, run_cli):
    """`robench eval -m demo-standard -m demo-quest --attack vit` (few samples and steps): every cell is stored
    and shows in the leaderboard and the report; the adaptive twin is not planned for these variants."""
    from pathlib import Path

    from robench.attack import load_attack_suite
    from robench.run.store import Store

    suite = Path(__file__).parents[1] / "attacks" / "vit.toml"
    specs = load_attack_suite(str(suite))
    assert {s.kind for s in specs} == {"patchfool", "pgd-attention", "pgd"}
    out = tmp_path / "res"
    code, _, err = run_cli("eval", "-m", "demo-standard", "-m", "demo-quest", "--data", "digits", "--attack", suite,
                           "--limit", "6", "--steps", "2", "--device", "cpu", "--out", out, "-q")
    assert code == 0, err
    res = Store(out).results()
    att = res[res["threat"] == "attack"]
    want = {(s.name, round(e, 6)) for s in specs if not s.adaptive and s.name != "probe-large-eps" for e in s.eps}
    for model in ("demo-standard", "demo-quest"):
        got = {(a, round(e, 6)) for a, e in att[att["model"] == model][["attack", "eps"]].itertuples(index=False)}
        assert want <= got and not any(a == "pgd-adaptive" for a, _ in got), got
        assert (att[att["model"] == model]["n"] == 6).all()
    code, lb, err = run_cli("leaderboard", out)
    assert code == 0, err
    for name in ("patchfool-sparse", "patchfool-sparse-random", "patchfool-mild", "pgd-attention"):
        assert name in lb, lb
    code, _, err = run_cli("report", out, "--out", tmp_path / "r")
    assert code == 0, err
    html = "".join(p.read_text() for p in (tmp_path / "r").rglob("*.html"))
    for name in ("patchfool-sparse", "patchfool-mild", "pgd-attention"):
        assert name in html


def test_eps_override_leaves_the_sparse_patch_unbounded():
    """--eps replaces the budget of the eps-bounded attacks of the vit suite, never the sparse patch's eps = 1."""
    from robench.attack import load_attack_suite

    specs = load_attack_suite("vit", eps="2/255")
    sparse = [s for s in specs if s.kind == "patchfool" and s.options.mode == "sparse"]
    others = [s for s in specs if s not in sparse]
    assert sparse and others
    assert all(s.eps == (1.0,) for s in sparse)
    assert all(s.eps == (2 / 255,) for s in others)
