"""Native FGSM/PGD: projection, clipping, torchattacks equivalence, eps batching + early exit identity, invariants."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robench.attack import AttackInvariantError, check_adversarial, make_spec, project, run_attack
from robench.attack.pgd import pgd_rows
from robench.errors import RobenchError
from robench.zoo.registry import create_model




def tiny_deit(variant="standard", seed=0):
    torch.manual_seed(seed)
    return create_model(f"deit-tiny-{variant}", num_classes=10, depth=2, embed_dim=32, num_heads=2, img_size=32,
                        patch_size=8)


@pytest.fixture(scope="module")
def model64():
    return tiny_deit().double()


@pytest.fixture(scope="module")
def data64(model64):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 32, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model64(x).argmax(1)
    y[1] = (y[1] + 1) % 10  # one clean-misclassified sample
    return x, y


# ---------------------------------------------------------------- projection and clipping (property tests)

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["Linf", "L2"]), st.floats(1e-3, 3.0), st.floats(0.01, 10.0))
def test_projection_properties(seed, norm, eps, scale):
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) * scale
    p = project(delta, eps, norm)
    n = p.flatten(1).abs().amax(1) if norm == "Linf" else p.flatten(1).norm(dim=1)
    assert (n <= eps * (1 + 1e-12)).all()
    assert torch.allclose(project(p, eps, norm), p)  # idempotent
    inside = delta * (0.5 * eps / (delta.flatten(1).abs().amax(1) if norm == "Linf"
                                   else delta.flatten(1).norm(dim=1))).view(-1, 1, 1, 1)
    assert torch.allclose(project(inside, eps, norm), inside)  # points in the ball stay
    if norm == "Linf":
        assert torch.equal(p, delta.clamp(-eps, eps))
    else:  # L2 keeps the direction
        cos = torch.nn.functional.cosine_similarity(p.flatten(1), delta.flatten(1), dim=1)
        assert torch.allclose(cos, torch.ones_like(cos))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["Linf", "L2"]), st.floats(1e-3, 0.5))
def test_check_adversarial_accepts_projected_clipped_and_rejects_violations(seed, norm, eps):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, 4, 4, generator=g)
    step = torch.randn(3, 3, 4, 4, generator=g)
    x_adv = (x + project(step, eps, norm)).clamp(0, 1)
    check_adversarial(x_adv, x, eps, norm, clip=True)  # valid: no error
    with pytest.raises(AttackInvariantError, match="exceeds eps"):
        check_adversarial(x + project(step, eps, norm) * 1.01 + (step.sign() * 1e-3), x, eps, norm, clip=False)
    with pytest.raises(AttackInvariantError, match=r"\[0, 1\]"):
        check_adversarial(x_adv - x_adv.amin() - 1e-3, x_adv, 1.0 if norm == "Linf" else 100.0, norm, clip=True)


# ---------------------------------------------------------------- fidelity vs torchattacks

@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_native_pgd_equals_torchattacks(norm):
    ta = pytest.importorskip("torchattacks")
    model = tiny_deit()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (5,), generator=g)
    eps, steps = (4 / 255, 5) if norm == "Linf" else (0.3, 5)
    alpha = 2.5 * eps / steps
    cls = ta.PGD if norm == "Linf" else ta.PGDL2
    ref = cls(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    e = torch.full((5,), eps)
    _, pred, ours = pgd_rows(model, x, y, None, e, torch.full((5,), alpha), x, norm, steps, early_exit=False)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    with torch.no_grad():
        assert torch.equal(pred, model(ref).argmax(1))
    # run_attack counts a sample robust only if every iterate is correct: robust there => robust at torchattacks' end
    spec = make_spec("pgd", norm=norm, eps=(eps,), steps=steps, random_start=False)
    res = run_attack(model, x, y, spec, list(range(5)))
    with torch.no_grad():
        ta_robust = (model(ref).argmax(1) == y) & (model(x).argmax(1) == y)
    assert not (res.robust[0] & ~ta_robust).any()


def test_torchattacks_backend_through_run_attack():
    pytest.importorskip("torchattacks")
    from robench.attack import load_attack_suite

    model = tiny_deit()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x).argmax(1)
    spec, = load_attack_suite("torchattacks:PGD?eps=1/255,8/255&steps=3&random_start=false")
    res = run_attack(model, x, y, spec, [0, 1, 2, 3])
    assert res.robust.shape == (2, 4) and res.robust.dtype == torch.bool
    assert spec.params_dict()["params"] == {"attack": "PGD", "random_start": False, "steps": 3}


# ---------------------------------------------------------------- eps batching + early exit == each eps alone

@settings(max_examples=5, deadline=None)
@given(eps_idx=st.lists(st.integers(0, 4), min_size=1, max_size=3, unique=True),
       norm=st.sampled_from(["Linf", "L2"]), random_start=st.booleans(), restarts=st.integers(1, 2),
       loss=st.sampled_from(["ce", "dlr"]), targeted=st.booleans(), pick=st.integers(0, 100))
def test_eps_batching_and_early_exit_match_single_runs(model64, data64, eps_idx, norm, random_start, restarts,
                                                      loss, targeted, pick):
    x, y = data64
    grid = [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255] if norm == "Linf" else [0.05, 0.1, 0.2, 0.5, 1.0]
    eps = tuple(sorted(grid[i] for i in eps_idx))
    spec = make_spec("pgd", norm=norm, eps=eps, steps=3, random_start=random_start, restarts=restarts,
                      loss=loss, targeted=targeted)
    seeds = [1000 + i for i in range(len(x))]
    full = run_attack(model64, x, y, spec, seeds)
    for k, e in enumerate(eps):  # each eps on its own
        one = run_attack(model64, x, y, dataclasses.replace(spec, eps=(e,)), seeds)
        assert torch.equal(one.robust[0], full.robust[k]) and torch.equal(one.adv_pred[0], full.adv_pred[k])
    # a random sub-batch in a random order, and one sample alone: per-sample outcomes must not move
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(pick))[:4]
    sub = run_attack(model64, x[perm], y[perm], spec, [seeds[i] for i in perm], max_rows=3)
    assert torch.equal(sub.robust, full.robust[:, perm]) and torch.equal(sub.adv_pred, full.adv_pred[:, perm])
    i = pick % len(x)
    alone = run_attack(model64, x[i:i + 1], y[i:i + 1], spec, seeds[i:i + 1])
    assert torch.equal(alone.robust[:, 0], full.robust[:, i]) and torch.equal(alone.adv_pred[:, 0], full.adv_pred[:, i])
    assert not full.robust[:, 1].any()  # the clean-misclassified sample is never robust


def reference_pgd_robust(model, x, y, eps, alpha, steps, norm):
    """Textbook PGD without any early exit: robust iff clean and every iterate are correctly classified."""
    xa, ok = x.clone(), torch.ones(len(x), dtype=torch.bool)
    for _ in range(steps):
        xa.requires_grad_(True)
        out = model(xa)
        ok &= out.argmax(1) == y
        g, = torch.autograd.grad(nn.functional.cross_entropy(out, y, reduction="sum"), xa)
        if norm == "Linf":
            xa = (x + (xa.detach() + alpha * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
        else:
            d = xa.detach() + alpha * g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10) - x
            d = d * (eps / d.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
            xa = (x + d).clamp(0, 1)
    with torch.no_grad():
        return ok & (model(xa).argmax(1) == y)


@pytest.mark.parametrize("norm,eps", [("Linf", (1 / 255, 2 / 255, 4 / 255)), ("L2", (0.05, 0.2, 0.5))])
def test_early_exit_equals_textbook_pgd(model64, data64, norm, eps):
    x, y = data64
    spec = make_spec("pgd", norm=norm, eps=eps, steps=4, random_start=False)
    res = run_attack(model64, x, y, spec, list(range(len(x))))
    for k, e in enumerate(eps):
        assert torch.equal(res.robust[k], reference_pgd_robust(model64, x, y, e, spec.options.alpha(e), 4, norm))


def test_early_exit_saves_work_and_fgsm_shares_clean_gradient(model64, data64):
    x, y = data64
    spec = make_spec("pgd", eps=(8 / 255, 16 / 255), steps=5, random_start=True)
    res = run_attack(model64, x, y, spec, list(range(len(x))))
    assert res.info["row_grad_steps"] < 2 * 5 * len(x)  # broken rows and the misclassified sample left early
    fgsm = make_spec("fgsm", eps=(1 / 255, 8 / 255), steps=1, step_size="1*eps", random_start=False)
    assert run_attack(model64, x, y, fgsm, list(range(len(x)))).info["row_grad_steps"] == 0


# ---------------------------------------------------------------- invariants and options

@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_invariant_violation_is_a_hard_error(monkeypatch, data64, strict, norm):
    """A broken projection raises, on the device (once, at the end) or strictly (float64, at once), same message."""
    import robench.attack.pgd as pgd

    model = tiny_deit()
    x, y = data64[0].float(), data64[1]
    if norm == "Linf":  # the L∞ step clamps to the box computed by linf_box: widen it
        monkeypatch.setattr(pgd, "linf_box", lambda x0, e, clip: ((x0 - 3 * e).clamp(0, 1), (x0 + 3 * e).clamp(0, 1)))
    else:
        import robench.attack.steps as steps  # take_step's L2 projection

        monkeypatch.setattr(steps, "project", lambda delta, eps, norm: delta * 3)
    eps = 4 / 255 if norm == "Linf" else 0.05
    spec = make_spec("pgd", norm=norm, eps=(eps,), steps=2, random_start=False)
    with pytest.raises(AttackInvariantError, match=rf"pgd: {norm} perturbation .* exceeds eps {eps:.5g}"):
        run_attack(model, x, y, spec, [0] * 6, strict=strict)


def test_device_check_catches_range_and_nonfinite(monkeypatch, data64):
    import robench.attack.pgd as pgd

    model = tiny_deit()
    x, y = data64[0].float(), data64[1]
    spec = make_spec("pgd", eps=(4 / 255,), steps=2, random_start=False)
    monkeypatch.setattr(pgd, "linf_box", lambda x0, e, clip: (x0 - e, x0 + e))  # forgets the [0, 1] clip
    xx = x.clone()
    xx[:, :, 0, 0] = 0.0  # black pixels: the first step goes below 0 for some
    with pytest.raises(AttackInvariantError, match=r"leaves \[0, 1\]"):
        run_attack(model, xx, y, spec, [0] * 6)
    monkeypatch.setattr(pgd, "linf_box", lambda x0, e, clip: (x0 - e, x0 + e * float("nan")))
    with pytest.raises(AttackInvariantError, match="non-finite"):
        run_attack(model, x, y, spec, [0] * 6)


def test_model_guards(data64):
    model = tiny_deit()
    x, y = data64[0].float(), data64[1]
    spec = make_spec("pgd", eps=(4 / 255,), steps=2)
    model.train()
    with pytest.raises(AttackInvariantError, match="eval mode"):
        run_attack(model, x, y, spec, [0] * 6)
    model.eval()
    run_attack(model, x, y, spec, [0] * 6)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    with pytest.raises(RobenchError, match=r"\[0, 1\]"):
        run_attack(model, x * 2, y, spec, [0] * 6)
    with pytest.raises(RobenchError, match="seeds"):
        run_attack(model, x, y, spec, [0])


def test_adaptive_sets_and_restores_elliptical_flag(data64):
    from robench.zoo.attention import EllipticalAttention

    model = tiny_deit("elliptical")
    layers = [m for m in model.modules() if isinstance(m, EllipticalAttention)]
    seen = []
    layers[1].register_forward_hook(lambda mod, inp, out: seen.append(mod.grad_through_scale))
    x, y = data64[0].float()[:2], data64[1][:2]
    spec = make_spec("pgd", eps=(4 / 255,), steps=2, adaptive=True)
    res = run_attack(model, x, y, spec, [0, 1])
    assert seen and all(seen) and not any(m.grad_through_scale for m in layers)
    assert res.info["adaptive"] is True and "adaptive" in spec.label
    with pytest.raises(RobenchError, match="no elliptical"):
        run_attack(tiny_deit(), x, y, spec, [0, 1])


def test_amp_bf16_runs_and_keeps_invariants(data64):
    model = tiny_deit()
    x, y = data64[0].float(), data64[1]
    spec = make_spec("pgd", eps=(2 / 255, 8 / 255), steps=3)
    res = run_attack(model, x, y, spec, list(range(6)), amp_dtype=torch.bfloat16)
    assert res.robust.shape == (2, 6) and res.info["amp"] == "bfloat16"


def test_paper_protocol_attacks_normalised_space_without_clipping():
    class Recorder(nn.Module):  # model whose net records what it is fed
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3 * 4 * 4, 3)
            self.seen = []

        def forward(self, z):
            self.seen.append(z.detach().clone())
            return self.lin(z.flatten(1))

    from robench.zoo.registry import ModelInfo, RobenchModel

    torch.manual_seed(0)
    m = RobenchModel(Recorder(), ModelInfo("rec", "rec", "standard", "rec")).eval()
    x = torch.zeros(4, 3, 4, 4)  # black images: any downward step would leave [0, 1] in pixel space
    y = torch.tensor([0, 1, 2, 0])
    eps = 8 / 255
    spec = make_spec("pgd", name="pgd-paper", eps=(eps,), steps=3, protocol="paper", random_start=True)
    res = run_attack(m, x, y, spec, [0, 1, 2, 3])
    z = m.normalize(x)
    adv = torch.cat(m.net.seen[1:])
    d = adv - z.repeat(len(m.net.seen) - 1, 1, 1, 1)
    assert d.abs().max() <= eps + 1e-6 and d.abs().max() > 0.9 * eps  # eps in normalised units
    assert (adv < z.min() - 1e-3).any()  # below the normalised black level: no clipping to valid pixels
    assert "NON-STANDARD" in spec.label and res.info["protocol"] == "paper"


@pytest.mark.parametrize("random_start", [True, False])
def test_clean_pred_skips_misclassified_without_changing_results(random_start):
    """Passing the caller's clean predictions only skips work: the per-sample outcomes are unchanged."""
    torch.manual_seed(0)
    model = create_model("deit-tiny-standard", num_classes=4, depth=1, embed_dim=16, num_heads=2, img_size=32,
                         patch_size=8).double()
    x = torch.rand(12, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[::3] = (y[::3] + 1) % 4  # a third of the samples start misclassified
    spec = make_spec("pgd", norm="Linf", eps=(1 / 255, 4 / 255), steps=4,
                      step_size="2.5*eps/steps", random_start=random_start)
    a = run_attack(model, x, y, spec, list(range(12)))
    b = run_attack(model, x, y, spec, list(range(12)), clean_pred=pred)
    assert torch.equal(a.robust, b.robust) and torch.equal(a.adv_pred, b.adv_pred)
    assert not b.robust[:, ::3].any()


@pytest.mark.parametrize("name,opts", [
    ("fgsm", {}),
    ("pgd", {"steps": 4, "random_start": True, "restarts": 2}),
    ("pgd", {"steps": 3, "protocol": "paper", "random_start": True}),
])
def test_fgsm_pgd_confidence_comes_from_their_own_logits(model64, data64, monkeypatch, name, opts):
    """The confidence of each final prediction (and the NLL of the true label) equals the model's softmax on the
    returned adversarial image, without a forward of its own: FGSM/PGD keep the logits that gave each prediction
    (the core's extra forward of every eps's final images is not run). FGSM's no-grad forwards are exactly its
    verdicts on the attacked rows plus one of the clean-misclassified sample (3 x 5 + 1; there were 18 more)."""
    import robench.attack.core as core

    x, y = data64
    seen = []

    class Counted(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m, self.info, self.net = m, m.info, m.net

        def normalize(self, z):
            return self.m.normalize(z)

        def forward(self, z):
            seen.append(0 if torch.is_grad_enabled() else z.shape[0])
            return self.m(z)

    monkeypatch.setattr(core, "_final_confidence", lambda *a: pytest.fail("the core ran its confidence forward"))
    eps = (1 / 255, 4 / 255, 16 / 255)
    spec = make_spec(name, eps=eps, **opts)
    res = run_attack(Counted(model64).eval(), x, y, spec, list(range(6)), keep_adv=True)
    paper = spec.protocol == "paper"
    with torch.no_grad():
        for k in range(len(eps)):  # x_adv is in the attacked space: normalised under the paper protocol
            logits = model64.net(res.info["x_adv"][k]) if paper else model64(res.info["x_adv"][k])
            logp = torch.log_softmax(logits.double(), 1)
            assert torch.equal(logits.argmax(1), res.adv_pred[k])
            torch.testing.assert_close(res.adv_conf[k].double(), logp.gather(1, res.adv_pred[k][:, None])[:, 0].exp(),
                                       atol=1e-6, rtol=0)
            torch.testing.assert_close(res.adv_nll[k].double(), -logp.gather(1, y[:, None])[:, 0], atol=1e-6, rtol=0)
    if name == "fgsm":
        assert sum(seen) == len(eps) * 5 + 1
