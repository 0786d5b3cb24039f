"""The device-side engine: counter-based draws, on-device checks = strict checks, compaction period, fp32
confirmation of low-precision hits, compile = eager, and the attack-kind registry (a toy kind from outside)."""

import dataclasses
import math
import textwrap

import pytest
import torch
from torch import nn

from robench.attack import (AttackInvariantError, AttackKind, AttackSpec, get_kind, kind_names, load_attack_suite,
                            make_spec, run_attack)
from robench.attack.base import register_kind, unregister_kind
from robench.attack.draws import row_keys, uniform, uniform_start
from robench.errors import RobenchError
from robench.zoo.registry import create_model

M64 = (1 << 64) - 1


def tiny_deit(seed=0, **kw):
    torch.manual_seed(seed)
    return create_model("deit-tiny-standard", num_classes=10, depth=2, embed_dim=32, num_heads=2, img_size=32,
                        patch_size=8, **kw)


# ---------------------------------------------------------------- counter-based draws

def _py_uniform(key: int, j: int) -> float:
    """An independent pure-Python (unbounded ints mod 2**64) implementation of draws.uniform's hash."""
    z = ((j * 0x9E3779B97F4A7C15) & M64) ^ (key & M64)
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 32
    z = (z * 0x94D049BB133111EB) & M64
    z ^= z >> 29
    return (z >> 40) / 2 ** 24


def test_uniform_matches_reference_arithmetic():
    keys = torch.tensor([0, 1, -1, 123456789123456789, -(1 << 63)], dtype=torch.int64)
    u = uniform(keys, 50)
    for r, k in enumerate(keys.tolist()):
        for j in (0, 1, 7, 49):
            assert u[r, j].item() == _py_uniform(k, j)


def test_draws_do_not_depend_on_the_batch():
    seeds = [11, 2 ** 62 + 5, 7, 0]
    full = uniform_start(row_keys(seeds, "start", 0, "cpu"), (3, 5, 5), "Linf", torch.float32)
    rev = uniform_start(row_keys(seeds[::-1], "start", 0, "cpu"), (3, 5, 5), "Linf", torch.float32)
    one = uniform_start(row_keys(seeds[2:3], "start", 0, "cpu"), (3, 5, 5), "Linf", torch.float32)
    assert torch.equal(full, rev.flip(0)) and torch.equal(full[2:3], one)
    other_restart = uniform_start(row_keys(seeds, "start", 1, "cpu"), (3, 5, 5), "Linf", torch.float32)
    assert not torch.equal(full, other_restart)


def test_draw_statistics():
    u = uniform(row_keys(range(64), "start", 0, "cpu"), 4096).double()
    n = u.numel()
    assert abs(u.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var().item() - 1 / 12) < 0.002
    c = u - 0.5
    lag1 = (c[:, 1:] * c[:, :-1]).mean().item() * 12  # correlation of neighbours
    rows = (c[1:] * c[:-1]).mean().item() * 12  # correlation of two samples at the same element
    assert abs(lag1) < 0.02 and abs(rows) < 0.02
    hist = torch.histc(u, bins=16, min=0, max=1) / n  # each bin ~1/16
    assert (hist - 1 / 16).abs().max() < 0.003
    s = uniform_start(row_keys(range(256), "start", 0, "cpu"), (3, 4, 4), "L2", torch.float64)
    r = s.flatten(1).norm(dim=1)
    assert (r <= 1 + 1e-12).all()
    assert abs((r ** 48).mean().item() - 0.5) < 0.1  # uniform in the ball: r^d is uniform on [0, 1]
    linf = uniform_start(row_keys(range(4), "start", 0, "cpu"), (3, 4, 4), "Linf", torch.float32)
    assert linf.min() >= -1 and linf.max() < 1


# ---------------------------------------------------------------- checks, compaction, compile

@pytest.fixture(scope="module")
def setup():
    model = tiny_deit().double()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(8, 3, 32, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[2] = (y[2] + 1) % 10
    return model, x, y


@pytest.mark.parametrize("norm,eps", [("Linf", (1 / 255, 4 / 255, 16 / 255)), ("L2", (0.1, 0.5))])
@pytest.mark.parametrize("random_start", [True, False])
def test_strict_checks_and_compaction_periods_give_identical_outcomes(setup, norm, eps, random_start):
    model, x, y = setup
    spec = make_spec("pgd", norm=norm, eps=eps, steps=5, random_start=random_start)
    ref = run_attack(model, x, y, spec, list(range(8)), strict=True, compact_every=1)
    for kw in (dict(), dict(compact_every=0), dict(compact_every=3), dict(compact_every=1, max_rows=5)):
        out = run_attack(model, x, y, spec, list(range(8)), **kw)
        assert torch.equal(out.robust, ref.robust) and torch.equal(out.adv_pred, ref.adv_pred), kw


@pytest.mark.slow
def test_compile_equals_eager(setup):
    model, x, y = setup
    for norm, eps in (("Linf", (2 / 255, 8 / 255)), ("L2", (0.2,))):
        spec = make_spec("pgd", norm=norm, eps=eps, steps=4, random_start=True)
        eager = run_attack(model, x, y, spec, list(range(8)))
        comp = run_attack(model, x, y, spec, list(range(8)), compile=True)
        assert torch.equal(eager.robust, comp.robust) and torch.equal(eager.adv_pred, comp.adv_pred)


# ---------------------------------------------------------------- low-precision verdicts confirmed in fp32

class NearTie(nn.Module):
    """Two logits that differ by 0.1 % (fp32 tells them apart, bf16 — 8 mantissa bits — does not, so its
    argmax picks class 0): label 1 is right in fp32 and 'misclassified' in bf16."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[0].fill_(1.0)
            self.fc.weight[1].fill_(1.001)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("kind", ["pgd", "fgsm"])
def test_bf16_hits_rejected_by_fp32(kind):
    m = NearTie().eval()
    x = torch.full((4, 3, 4, 4), 0.5)
    y = torch.ones(4, dtype=torch.long)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert (m(x).float().argmax(1) == 0).all()  # the premise: bf16 calls every sample misclassified
    spec = make_spec(kind, eps=(1e-4,), steps=3 if kind == "pgd" else 1,
                      step_size="2.5*eps/steps" if kind == "pgd" else "1*eps", random_start=kind == "pgd")
    fp32 = run_attack(m, x, y, spec, [0, 1, 2, 3])
    bf16 = run_attack(m, x, y, spec, [0, 1, 2, 3], amp_dtype=torch.bfloat16)
    assert fp32.robust.all()  # a 1e-4 ball cannot close a 0.1 % margin of 24
    assert torch.equal(bf16.robust, fp32.robust) and torch.equal(bf16.adv_pred, fp32.adv_pred)
    assert bf16.info["rejected_hits"][0] >= 4  # at least the clean pass's 4 low-precision verdicts
    assert fp32.info["rejected_hits"] == [0]
    # the caller's low-precision clean predictions are confirmed too
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x).float().argmax(1)
    again = run_attack(m, x, y, spec, [0, 1, 2, 3], amp_dtype=torch.bfloat16, clean_pred=low)
    assert torch.equal(again.robust, fp32.robust)


def test_bf16_robust_accuracy_close_to_fp32_on_a_demo_model():
    """Same samples, PGD-10 at 2/255 and 8/255 on demo-quest (digits): bf16 within 0.5 pp of fp32 (here every
    bf16 'hit' is confirmed in fp32, so bf16 can only miss hits, never invent them)."""
    from robench.data.digits import digits_tensors

    m = create_model("demo-quest").eval()
    x, y, _ = digits_tensors("test")
    x, y = x[:96], y[:96]
    spec = make_spec("pgd", eps=(2 / 255, 8 / 255), steps=10, random_start=True)
    a = run_attack(m, x, y, spec, list(range(len(x)))).robust.float().mean(1)
    b = run_attack(m, x, y, spec, list(range(len(x))), amp_dtype=torch.bfloat16).robust.float().mean(1)
    assert ((a - b).abs() <= 0.005 + 1e-9).all(), (a, b)


# ---------------------------------------------------------------- the registry

@dataclasses.dataclass(frozen=True)
class ToyOptions:
    flips: int = 1


def register_toy(name, attack, **traits):
    """Register a kind `name` whose attack is `attack(f, x, labels, eps, spec, seeds, ctx)`."""

    def parse(table, common, where):
        return AttackSpec(**common, options=ToyOptions(int(table.get("flips", 1))))

    return register_kind(AttackKind(name, parse=parse, attack=attack, label=lambda s: f"{name} {s.norm_label}",
                                    order=9, keys=("flips",), **traits))


@pytest.fixture
def toy_kind():
    """A toy attack kind registered from outside the package: 'noise' adds eps * sign(random) once."""

    def attack(f, x, labels, eps, spec, seeds, ctx):
        g = torch.Generator().manual_seed(int(ctx.batch_seeds[0]) % (2 ** 31))
        return (x + eps * torch.randint(0, 2, x.shape, generator=g).mul(2).sub(1)).clamp(0, 1)

    kind = register_toy("toy-noise", attack, batch_random=True)
    yield kind
    unregister_kind("toy-noise")


def test_registry_lists_kinds_in_display_order(toy_kind):
    builtin = ("fgsm", "pgd", "autoattack", "torchattacks")
    names = kind_names()
    assert [n for n in names if n in builtin] == list(builtin)  # the built-ins, in display order
    assert "toy-noise" in names and names.index("toy-noise") > names.index("torchattacks")  # order 9
    assert [get_kind(k).batch_random for k in builtin] == [False, False, True, True]
    assert get_kind("toy-noise") is toy_kind and toy_kind.batch_random
    with pytest.raises(RobenchError, match="unknown attack kind 'pdg'.*pgd"):
        get_kind("pdg")
    with pytest.raises(RobenchError, match="exactly one of attack= .* or fused="):
        AttackKind("neither", parse=None, label=None, order=0)


def test_toy_kind_from_outside_runs_through_suite_and_eval(toy_kind, tmp_path, run_cli):
    from robench.report.results import attack_order

    suite = tmp_path / "toy.toml"
    suite.write_text(textwrap.dedent("""
        description = "a toy attack kind registered by a test"
        [[attack]]
        name = "toy"
        kind = "toy-noise"
        eps = ["8/255", "64/255"]
    """))
    spec, = load_attack_suite(str(suite))
    assert spec.kind == "toy-noise" and spec.label == "toy-noise L∞" and attack_order()[-1] == "toy-noise"
    assert spec.options == ToyOptions(1) and spec.params_dict()["flips"] == 1
    out = tmp_path / "res"
    code, _, err = run_cli("eval", "--model", "demo-standard", "--data", "digits", "--limit", "16",
                           "--attack", str(suite), "--out", out, "-q")
    assert code == 0, err
    from robench.run import Store

    res = Store(out).results()
    toy = res[res.attack == "toy"].sort_values("eps")
    assert len(toy) == 2 and toy.value.iloc[1] <= toy.value.iloc[0] + 1e-9
    bad = tmp_path / "bad.toml"
    bad.write_text('[[attack]]\nkind = "toy-noise"\nsteps = 3\n')
    with pytest.raises(RobenchError, match="unknown attack key 'steps'.*keys: name, kind, norm, eps, protocol, "
                                           "adaptive, flips"):
        load_attack_suite(str(bad))


# ---------------------------------------------------------------- the protocol is the core's, for every kind

def toy_batch():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.rand(6, 3, 4, 4, generator=g) * 0.8 + 0.1
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 3  # two clean-misclassified samples
    return model, x, y


@pytest.mark.parametrize("bad, message", [
    (lambda x, eps: x + 2 * eps, "perturbation .* exceeds eps"),  # out of the eps ball
    (lambda x, eps: x * float("nan"), "non-finite"),
    (lambda x, eps: x + 0.9 * eps * torch.ones_like(x).sign() * (1 + 1e-3), "exceeds eps"),  # L2: far over
])
def test_core_rejects_a_kind_that_breaks_the_invariants(bad, message):
    """A kind that forgets the checks cannot void the guarantee: run_attack validates every batch it returns."""
    register_toy("toy-bad", lambda f, x, labels, eps, spec, seeds, ctx: bad(x, eps))
    try:
        model, x, y = toy_batch()
        spec = make_spec("toy-bad", eps=(0.1,), norm="L2")  # in L2, x ± 0.09 everywhere is far outside 0.1
        with pytest.raises(AttackInvariantError, match=message):
            run_attack(model, x, y, spec, list(range(6)))
        assert not model.training
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
    finally:
        unregister_kind("toy-bad")


def test_core_rejects_out_of_range_images_under_clipping():
    register_toy("toy-range", lambda f, x, labels, eps, spec, seeds, ctx: torch.zeros_like(x) - eps / 2)
    try:
        model, x, _ = toy_batch()
        x = torch.zeros_like(x)
        with torch.no_grad():
            y = model(x).argmax(1)  # every sample clean-correct: all reach the kind
        with pytest.raises(AttackInvariantError, match="leaves \\[0, 1\\]"):
            run_attack(model, x, y, make_spec("toy-range", eps=(0.1,)), list(range(6)))
    finally:
        unregister_kind("toy-range")


def test_core_gates_on_clean_correct_samples_and_checks_shapes():
    seen = []

    def attack(f, x, labels, eps, spec, seeds, ctx):
        seen.append((len(x), list(seeds), labels.tolist()))
        return x  # no perturbation at all

    register_toy("toy-id", attack)
    try:
        model, x, y = toy_batch()
        res = run_attack(model, x, y, make_spec("toy-id", eps=(0.01, 0.1)), list(range(10, 16)))
        # only the 4 clean-correct samples reach the kind, once per eps, with their own seeds and true labels
        assert seen == [(4, [12, 13, 14, 15], y[2:].tolist())] * 2
        assert res.robust.tolist() == [[False, False, True, True, True, True]] * 2
        assert res.info["clean_correct"] == [False, False, True, True, True, True]
        assert res.info["rejected_hits"] == [0, 0] and res.zero_grad.shape == (6,)
    finally:
        unregister_kind("toy-id")
    register_toy("toy-short", lambda f, x, labels, eps, spec, seeds, ctx: x[:1])
    try:
        with pytest.raises(AttackInvariantError, match="shape"):
            run_attack(model, x, y, make_spec("toy-short", eps=(0.1,)), list(range(6)))
    finally:
        unregister_kind("toy-short")


def test_core_confirms_low_precision_hits_for_every_kind():
    """The identity 'attack' under bf16: every bf16 verdict is a hit, fp32 (in the core) rejects them all."""
    register_toy("toy-same", lambda f, x, labels, eps, spec, seeds, ctx: x)
    try:
        m = NearTie().eval()
        x, y = torch.full((4, 3, 4, 4), 0.5), torch.ones(4, dtype=torch.long)
        res = run_attack(m, x, y, make_spec("toy-same", eps=(1e-4, 1e-3)), [0, 1, 2, 3], amp_dtype=torch.bfloat16)
        assert res.robust.all() and (res.adv_pred == 1).all()
        assert res.info["rejected_hits"] == [8, 8]  # 4 clean + 4 adversarial verdicts, per eps
    finally:
        unregister_kind("toy-same")


def test_core_validates_the_images_of_a_fused_kind():
    """A fused kind (every eps at once, like PGD) must hand back its images; the core checks them."""
    from robench.attack.pgd import parse_pgd, run_pgd

    def far(f, x0, y, spec, seeds, ctx):
        res = run_pgd(f, x0, y, spec, seeds, ctx)
        res.info["x_adv"] = res.info["x_adv"] + 3 * max(spec.eps)
        return res

    def lost(f, x0, y, spec, seeds, ctx):
        res = run_pgd(f, x0, y, spec, seeds, ctx)
        del res.info["x_adv"]
        return res

    for name, fused, message in (("fused-far", far, "exceeds eps"), ("fused-lost", lost, "info\\['x_adv'\\]")):
        register_kind(AttackKind(name, parse=parse_pgd, fused=fused, label=str, order=9, keys=("steps",)))
        try:
            model, x, y = toy_batch()
            with pytest.raises(AttackInvariantError, match=message):
                run_attack(model, x, y, make_spec(name, eps=(0.05, 0.1), steps=2), list(range(6)))
        finally:
            unregister_kind(name)


def test_record_rows_sync_free_equals_indexed_copy():
    from robench.attack.pgd import record_rows

    g = torch.Generator().manual_seed(0)
    rows_x, idx = torch.rand(5, 3, 2, 2, generator=g), torch.tensor([7, 1, 4, 0, 9])
    new = torch.tensor([True, False, True, False, True])
    a = torch.rand(10, 3, 2, 2, generator=g)
    b, before = a.clone(), a.clone()
    record_rows(a, idx, new, rows_x, sync_free=False)
    record_rows(b, idx, new, rows_x, sync_free=True)
    assert torch.equal(a, b) and torch.equal(a[[7, 4, 9]], rows_x[[0, 2, 4]])
    untouched = [i for i in range(10) if i not in (7, 4, 9)]
    assert torch.equal(a[untouched], before[untouched])


def test_keep_adv_images_are_validated_and_returned():
    model, x, y = toy_batch()
    res = run_attack(model, x, y, make_spec("pgd", eps=(0.05, 0.1), steps=2), list(range(6)), keep_adv=True)
    assert res.info["x_adv"].shape == (2, *x.shape)
    # each recorded image is the one its prediction was made on (rows mapped to their (eps, sample) slot)
    for norm, eps in (("Linf", (0.02, 0.05, 0.3)), ("L2", (0.1, 0.5, 2.0))):
        for compact in (0, 1, 2):
            spec = make_spec("pgd", norm=norm, eps=eps, steps=4, restarts=2)
            res = run_attack(model, x, y, spec, list(range(6)), keep_adv=True, compact_every=compact, max_rows=5)
            with torch.no_grad():
                pred = torch.stack([model(res.info["x_adv"][k]).argmax(1) for k in range(3)])
            attacked = torch.tensor(res.info["clean_correct"]).expand(3, -1)
            assert torch.equal(pred[attacked], res.adv_pred[attacked]), (norm, compact)
            assert torch.equal(res.info["x_adv"][~attacked], x.expand(3, *x.shape)[~attacked])
            assert res.robust.sum() < attacked.sum()  # some rows broke: the check covers broken and surviving rows
    assert "x_adv" not in run_attack(model, x, y, make_spec("pgd", eps=(0.05,), steps=2), list(range(6))).info


def test_no_import_cycle_inside_attack():
    """base, draws and spec never import a kind module or core; kind modules never import core."""
    import ast
    from pathlib import Path

    import robench.attack

    root = Path(robench.attack.__file__).parent
    imports = {}
    for f in root.glob("*.py"):
        tree = ast.parse(f.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robench.attack."):
                names.add(node.module.rsplit(".", 1)[1])
        imports[f.stem] = names
    order = ["base", "draws", "spec", "pgd", "fgsm", "autoattack", "torchattacks_backend", "core", "sanity"]
    for i, mod in enumerate(order):
        above = set(order[i + 1:])
        assert not imports[mod] & above, (mod, imports[mod] & above)


def test_bf16_eval_records_rejected_hits_and_leaderboard_shows_them(tmp_path, run_cli):
    from robench.report.leaderboard import format_leaderboard, leaderboard
    from robench.run import Store

    args = ["eval", "--model", "demo-quest", "--data", "digits", "--limit", "24", "--attack", "fgsm", "-q"]
    code, _, err = run_cli(*args, "--precision", "bf16", "--out", tmp_path / "bf16")
    assert code == 0, err
    code, _, err = run_cli(*args, "--out", tmp_path / "fp32")
    assert code == 0, err
    import json

    ex = [json.loads(e) for e in Store(tmp_path / "bf16").extras().extra_json if e and "attacked" in e]
    assert ex and all(isinstance(e["rejected_hits"], int) and e["rejected_hits"] >= 0 for e in ex)
    every = [json.loads(e) for e in Store(tmp_path / "bf16").extras().extra_json if e and "rejected_hits" in e]
    lb = leaderboard(tmp_path / "bf16")
    assert lb["rejected_hits"].iloc[0] == sum(e["rejected_hits"] for e in every)  # attack and clean cells
    assert "rejected_hits" in format_leaderboard(lb)
    assert "rejected_hits" not in leaderboard(tmp_path / "fp32").columns  # fp32 runs: nothing to confirm


class _WrongUnderAutocast(torch.nn.Module):
    """A digits model whose low-precision forward is wrong on purpose: under autocast it predicts the next class."""

    def __init__(self):
        super().__init__()
        from robench.zoo import create_model

        self.inner = create_model("demo-quest")

    def forward(self, x):
        logits = self.inner(x)
        if torch.is_autocast_enabled(x.device.type):
            return logits.roll(1, dims=1)
        return logits


def test_bf16_clean_and_corruption_verdicts_confirmed_in_fp32(tmp_path):
    """Every 'misclassified' verdict of a bf16 forward is re-checked in fp32, in the clean and corruption cells too:
    a model that is wrong only under autocast gets its fp32 accuracy, and each rejected hit is counted."""
    import robench

    model = _WrongUnderAutocast()
    kw = dict(limit=40, device="cpu", corruptions=["cifar10-c"], corruption_names=["gaussian_noise"], severities=[3])
    fp32 = robench.evaluate(model, "digits", precision="fp32", **kw)
    bf16 = robench.evaluate(model, "digits", precision="bf16", out=tmp_path / "bf16", **kw)
    # every sample fp32 finds correct was a bf16 "hit" that the fp32 re-check rejected: clean + corruption cells
    n_correct = round(40 * fp32[fp32.threat == "clean"].value.item()) + round(
        40 * fp32[fp32.threat == "corruption"].value.item())
    assert robench.leaderboard(tmp_path / "bf16")["rejected_hits"].iloc[0] == n_correct
    for threat in ("clean", "corruption"):
        a32 = fp32[fp32.threat == threat].value.item()
        a16 = bf16[bf16.threat == threat].value.item()
        assert a16 == a32 and a32 > 0.5, (threat, a16, a32)
    with torch.no_grad():
        from robench.data.formats import load_clean

        ds = load_clean("digits", model.inner.info, limit=40)
        x = torch.stack([ds.dataset[i][0] for i in range(len(ds))])
        y = torch.tensor([ds.dataset[i][1] for i in range(len(ds))])
        correct = int((model(x).argmax(1) == y).sum())
    assert correct == round(40 * fp32[fp32.threat == "clean"].value.item())
