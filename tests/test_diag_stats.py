"""Attention diagnostics: numbers checked against an explicit computation from the module weights."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from robench.diag.stats import inspect_model, layer_summary
from robench.errors import RobenchError
from robench.zoo.attention import ATTENTION_VARIANTS
from robench.zoo.registry import create_model

TINY = dict(num_classes=10, depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8)


def tiny(variant):
    torch.manual_seed(0)
    model = create_model(f"deit-tiny-{variant}", **TINY)
    with torch.no_grad():  # make the variant-specific parameters non-trivial
        for name, p in model.named_parameters():
            if any(s in name for s in ("qk_scale", "q_scale", "k_scale", "q_norm", "k_norm")):
                p.add_(torch.rand_like(p))
    return model


def capture(model, x):
    """Inputs of every attention layer and outputs of every block, read with plain hooks."""
    ins, outs, hs = [], [], []
    for blk in model.net.blocks:
        hs.append(blk.norm1.register_forward_hook(lambda m, a, o: ins.append(o.detach())))
        hs.append(blk.register_forward_hook(lambda m, a, o: outs.append(o.detach())))
    with torch.no_grad():
        logits = model(x)
    for h in hs:
        h.remove()
    return ins, outs, logits


def by_hand(variant, attn, x, v_prev):
    """Softmax operands written out from the weights: (q_eff, k, v, q_raw, k_raw, m)."""
    B, N, C = x.shape
    H = attn.num_heads
    d = C // H
    qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    q_raw, k_raw, v = qkv[0], qkv[1], qkv[2]
    q, k, scale, m = q_raw, k_raw, d ** -0.5, None
    unit = lambda t: t / t.norm(dim=-1, keepdim=True)  # noqa: E731
    if variant == "quest":
        k, scale = unit(k), 1.0
    elif variant == "qnorm":
        q, scale = unit(q), 1.0
    elif variant == "qknorm":
        q = F.layer_norm(q, (d,), attn.q_norm.weight, attn.q_norm.bias, attn.q_norm.eps)
        k = F.layer_norm(k, (d,), attn.k_norm.weight, attn.k_norm.bias, attn.k_norm.eps)
    elif variant == "qknorm-hs":
        q, k, scale = unit(q) * attn.qk_scale.view(1, -1, 1, 1), unit(k), 1.0
    elif variant == "qknorm-ds":
        q, k, scale = unit(q) * attn.q_scale, unit(k) * attn.k_scale, 1.0
    elif variant.startswith("elliptical"):
        if v_prev is not None:
            m = (v - v_prev).abs().mean(dim=2, keepdim=True)
            m = m / m.amax(dim=-1, keepdim=True)
            q = q * m
        if variant == "elliptical-quest":
            k, scale = unit(k), 1.0
    return q * scale, k, v, q_raw, k_raw, m


def stat(df, layer, head, name):
    row = df[(df.layer == layer) & (df["head"] == head) & (df.stat == name)]
    assert len(row) == 1, (layer, head, name)
    return row.value.item()


@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
def test_stats_match_explicit_computation(variant):
    model = tiny(variant)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ins, outs, logits = capture(model, x)
    df = inspect_model(model, [x[:2], (x[2:], torch.tensor([0]))])  # two batches, tensor and tuple form
    with torch.no_grad():
        assert torch.equal(model(x), logits)  # hooks removed, forward unchanged
    v_prev = None
    for layer, blk in enumerate(model.net.blocks):
        with torch.no_grad():
            q, k, v, q_raw, k_raw, m = by_hand(variant, blk.attn, ins[layer], v_prev)
        v_prev = v
        p = (q @ k.transpose(-2, -1)).softmax(-1)  # [B, H, N, N]
        for h in range(2):
            ph = p[:, h]
            ent = -(ph * ph.log()).sum(-1).mean().item()
            assert stat(df, layer, h, "attn_entropy_mean") == pytest.approx(ent, rel=1e-4)
            assert stat(df, layer, h, "attn_max_mean") == pytest.approx(ph.amax(-1).mean().item(), rel=1e-4)
            share = (ph.sum(1) / ph.shape[1]).amax(-1).mean().item()
            assert stat(df, layer, h, "top_key_share") == pytest.approx(share, rel=1e-4)
            qn, kn = q[:, h].norm(dim=-1).flatten(), k[:, h].norm(dim=-1).flatten()
            assert stat(df, layer, h, "q_norm_mean") == pytest.approx(qn.mean().item(), rel=1e-4)
            assert stat(df, layer, h, "k_norm_max") == pytest.approx(kn.max().item(), rel=1e-4)
            assert stat(df, layer, h, "q_norm_max_over_mean") == pytest.approx((qn.max() / qn.mean()).item(),
                                                                               rel=1e-4)
            krn = k_raw[:, h].norm(dim=-1).flatten().numpy()
            assert stat(df, layer, h, "k_raw_norm_p95") == pytest.approx(np.percentile(krn, 95), rel=1e-4)
            assert stat(df, layer, h, "q_raw_norm_p50") == pytest.approx(
                np.percentile(q_raw[:, h].norm(dim=-1).flatten().numpy(), 50), rel=1e-4)
            if variant.startswith("elliptical"):
                mh = torch.ones(3, 16) if m is None else m[:, h, 0]
                assert stat(df, layer, h, "m_mean") == pytest.approx(mh.mean().item(), rel=1e-4)
                assert stat(df, layer, h, "m_min") == pytest.approx(mh.min().item(), rel=1e-4, abs=1e-6)
                assert stat(df, layer, h, "m_max") == pytest.approx(1.0)
                assert stat(df, layer, h, "m_std") == pytest.approx(mh.numpy().std(), rel=1e-3, abs=1e-6)
            else:
                assert not df.stat.str.startswith("m_").any()
        o = F.normalize(outs[layer], dim=-1)
        n = o.shape[1]
        cos = o @ o.transpose(1, 2)
        expected = ((cos.sum((1, 2)) - n) / (n * (n - 1))).mean().item()
        assert stat(df, layer, -1, "collapse_cos") == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_quest_effective_key_norms_are_one_but_raw_are_not():
    df = inspect_model(tiny("quest"), [torch.rand(2, 3, 32, 32)])
    s = layer_summary(df)
    assert np.allclose(s["k_norm_mean"], 1.0, atol=1e-5) and np.allclose(s["k_norm_max"], 1.0, atol=1e-5)
    assert not np.allclose(s["k_raw_norm_mean"], 1.0, atol=1e-2)
    assert list(s.index) == [0, 1] and "collapse_cos" in s.columns


def test_max_tokens_limits_query_rows():
    model = tiny("standard")
    x = torch.rand(2, 3, 32, 32)
    full = inspect_model(model, [x])
    part = inspect_model(model, [x], max_tokens=1)  # only the class token's query row
    ins, _, _ = capture(model, x)
    q, k, *_ = by_hand("standard", model.net.blocks[0].attn, ins[0], None)
    p0 = (q[:, 0, :1] @ k[:, 0].transpose(-2, -1)).softmax(-1)
    assert stat(part, 0, 0, "attn_max_mean") == pytest.approx(p0.amax(-1).mean().item(), rel=1e-4)
    assert stat(part, 0, 0, "attn_max_mean") != pytest.approx(stat(full, 0, 0, "attn_max_mean"), rel=1e-3)
    # norms always use every token
    assert stat(part, 0, 0, "k_norm_mean") == pytest.approx(stat(full, 0, 0, "k_norm_mean"), rel=1e-6)


def test_timm_vit_without_robench_variant_works():
    model = create_model("timm:vit_tiny_patch16_224", num_classes=10, depth=1, embed_dim=32, num_heads=2,
                         img_size=32, patch_size=8)
    df = inspect_model(model, [torch.rand(2, 3, 32, 32)])
    assert set(df.layer) == {0} and set(df["head"]) == {-1, 0, 1}
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["layer", "head", "stat", "value"]


def test_model_without_attention_is_a_clear_error():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    with pytest.raises(RobenchError, match="model has no attention layers"):
        inspect_model(net, [torch.rand(1, 3, 2, 2)])


def test_bad_batches_are_clear_errors():
    model = tiny("standard")
    with pytest.raises(RobenchError, match="no samples"):
        inspect_model(model, [])
    with pytest.raises(RobenchError, match="expected image tensors"):
        inspect_model(model, ["not an image"])
    assert math.isfinite(stat(inspect_model(model, [torch.rand(1, 3, 32, 32)]), 1, -1, "collapse_cos"))


def test_inspect_under_corruption_differs_from_clean():
    from robench.diag import inspect

    clean = inspect("demo-quest", data="digits", limit=16)
    noisy = inspect("demo-quest", data="digits", limit=16, corruption="gaussian_noise", severity=5, suite="cifar10-c")
    key = ["layer", "head", "stat"]
    merged = clean.merge(noisy, on=key, suffixes=("_clean", "_noisy"))
    assert len(merged) == len(clean)
    ent = merged[merged.stat == "attn_entropy_mean"]
    assert (ent.value_clean - ent.value_noisy).abs().max() > 1e-3


def test_inspect_under_attack_uses_adversarial_images():
    import torch

    from robench.attack import make_spec, run_attack
    from robench.diag import inspect
    from robench.zoo.registry import create_model

    model = create_model("demo-quest")
    x = torch.rand(3, 3, 32, 32)
    spec = make_spec("pgd", norm="Linf", eps=(8 / 255,), steps=3, step_size="2.5*eps/steps", random_start=True)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = run_attack(model, x, y, spec, [1, 2, 3], keep_adv=True)
    xa = out.info["x_adv"][0]
    assert xa.shape == x.shape and (xa - x).abs().max() <= 8 / 255 + 1e-6 and (xa - x).abs().max() > 0
    with torch.no_grad():
        assert torch.equal(model(xa).argmax(1) == y, out.robust[0])  # the kept images are the attacked ones
    clean = inspect("demo-quest", data="digits", limit=16)
    adv = inspect("demo-quest", data="digits", limit=16, attack="pgd", eps="8/255")
    m = clean.merge(adv, on=["layer", "head", "stat"], suffixes=("_c", "_a"))
    assert len(m) == len(clean) and (m.value_c - m.value_a).abs().max() > 1e-4
