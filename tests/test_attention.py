"""Each attention variant against a plain explicit-softmax reference written from its definition."""

import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention

from robench.zoo.attention import (ATTENTION_VARIANTS, EllipticalAttention, attention_layer, elliptical_scale,
                                   link_value_chain, set_elliptical_adaptive)
from robench.zoo.registry import create_model

DIM, HEADS = 32, 4
D = DIM // HEADS


def heads(mod, x):
    B, N, _ = x.shape
    q, k, v = mod.qkv(x).reshape(B, N, 3, HEADS, D).permute(2, 0, 3, 1, 4)
    return q, k, v


def explicit(q, k, v, scale):
    """softmax(scale q kᵀ) v, written out."""
    w = torch.softmax(scale * q @ k.transpose(-2, -1), dim=-1)
    return w @ v


def unit(t):
    return t / t.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def layer_norm(mod_norm, t):
    return F.layer_norm(t, (D,), mod_norm.weight, mod_norm.bias, mod_norm.eps)


def reference_forward(mod, x, variant, v_prev=None):
    q, k, v = heads(mod, x)
    if variant == "standard":
        o = explicit(q, k, v, 1 / math.sqrt(D))
    elif variant == "quest":
        o = explicit(q, unit(k), v, 1.0)
    elif variant == "qnorm":
        o = explicit(unit(q), k, v, 1.0)
    elif variant == "qknorm":
        o = explicit(layer_norm(mod.q_norm, q), layer_norm(mod.k_norm, k), v, 1 / math.sqrt(D))
    elif variant == "qknorm-hs":
        logits = mod.qk_scale.view(1, -1, 1, 1) * (unit(q) @ unit(k).transpose(-2, -1))
        o = torch.softmax(logits, -1) @ v
    elif variant == "qknorm-ds":
        o = explicit(unit(q) * mod.q_scale, unit(k) * mod.k_scale, v, 1.0)
    elif variant in ("elliptical", "elliptical-quest"):
        if v_prev is None:
            m = torch.ones(1)
        else:
            m = (v - v_prev).abs().mean(dim=2, keepdim=True).detach()
            m = m / m.amax(-1, keepdim=True)
        kk = unit(k) if variant == "elliptical-quest" else k
        o = explicit(q * m, kk, v, 1.0 if variant == "elliptical-quest" else 1 / math.sqrt(D))
    B, N, _ = x.shape
    return mod.proj(o.transpose(1, 2).reshape(B, N, DIM)), v


def make(variant, seed=0):
    torch.manual_seed(seed)
    cls = attention_layer(variant)
    kw = {"norm_layer": torch.nn.LayerNorm} if variant == "qknorm" else {}
    mods = [cls(DIM, num_heads=HEADS, qkv_bias=True, **kw) for _ in range(2)]
    link_value_chain(mods)  # blocks 0 and 1 of one model (elliptical)
    for m in mods:  # make learnable scales non-trivial
        for name, p in m.named_parameters():
            if name in ("qk_scale", "q_scale", "k_scale") or "norm" in name:
                with torch.no_grad():
                    p.add_(torch.rand_like(p))
    return mods


@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
def test_variant_matches_explicit_reference(variant):
    mods = make(variant)
    x0 = torch.randn(2, 7, DIM, requires_grad=True)
    x1 = torch.randn(2, 7, DIM, requires_grad=True)
    # two layers in sequence: the second sees the first's values (elliptical)
    y0, y1 = mods[0](x0), mods[1](x1)
    r0, v0 = reference_forward(mods[0], x0, variant)
    r1, _ = reference_forward(mods[1], x1, variant, v_prev=v0)
    torch.testing.assert_close(y0, r0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y1, r1, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(y1)
    gx = torch.autograd.grad((y0 * g).sum() + (y1 * g).sum(), (x0, x1))
    gr = torch.autograd.grad((r0 * g).sum() + (r1 * g).sum(), (x0, x1))
    for a, b in zip(gx, gr):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_standard_matches_timm_attention():
    torch.manual_seed(0)
    ours = attention_layer("standard")(DIM, num_heads=HEADS, qkv_bias=True)
    timm_attn = TimmAttention(DIM, num_heads=HEADS, qkv_bias=True)
    timm_attn.load_state_dict(ours.state_dict())  # same parameter names
    x = torch.randn(3, 11, DIM)
    torch.testing.assert_close(ours(x), timm_attn(x), atol=1e-6, rtol=1e-5)


def test_quest_invariant_to_key_rescaling():
    """Rescaling any key (any token's k, per head) leaves QUEST's output unchanged."""
    mod = attention_layer("quest")(DIM, num_heads=HEADS)
    x = torch.randn(2, 5, DIM)
    q, k, v, scale = mod.attention_inputs(x)
    k_raw = mod.qkv_heads(x)[1]
    factor = torch.rand(2, HEADS, 5, 1) * 10 + 0.1
    q2, k2, _, _ = mod.attention_inputs(x)
    # feed the rescaled raw keys through the same normalisation path
    from robench.zoo.attention import l2_normalize
    torch.testing.assert_close(l2_normalize(k_raw * factor), k, atol=1e-6, rtol=1e-5)
    out1 = F.scaled_dot_product_attention(q, k, v, scale=scale)
    out2 = F.scaled_dot_product_attention(q, l2_normalize(k_raw * factor), v, scale=scale)
    torch.testing.assert_close(out1, out2, atol=1e-6, rtol=1e-5)
    # ...whereas standard attention changes
    std = explicit(q, k_raw, v, 1 / math.sqrt(D))
    std2 = explicit(q, k_raw * factor, v, 1 / math.sqrt(D))
    assert (std - std2).abs().max() > 1e-3


def test_qnorm_invariant_to_query_rescaling():
    mod = attention_layer("qnorm")(DIM, num_heads=HEADS)
    x = torch.randn(2, 5, DIM)
    q, k, v, scale = mod.attention_inputs(x)
    q_raw = mod.qkv_heads(x)[0]
    from robench.zoo.attention import l2_normalize
    torch.testing.assert_close(l2_normalize(q_raw * 7.5), q, atol=1e-6, rtol=1e-5)


def test_elliptical_with_unit_scale_equals_standard():
    """Block 0 of elliptical (m = 1) is standard attention; and v_l == v_{l-1} falls back to m = 1 without NaN."""
    torch.manual_seed(0)
    ell = attention_layer("elliptical")
    a, b = ell(DIM, num_heads=HEADS), ell(DIM, num_heads=HEADS)
    link_value_chain([a, b])
    std = attention_layer("standard")(DIM, num_heads=HEADS)
    std.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, DIM)
    torch.testing.assert_close(a(x), std(x), atol=1e-6, rtol=1e-5)
    # identical values in consecutive blocks: m would be 0/0
    b.load_state_dict(a.state_dict())
    out = b(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, std(x), atol=1e-6, rtol=1e-5)


def test_elliptical_scale_gradient_option():
    v = torch.randn(2, 3, 5, 4, requires_grad=True)
    vp = torch.randn(2, 3, 5, 4)
    m = elliptical_scale(v, vp, grad=False)
    assert not m.requires_grad
    assert torch.allclose(m.amax(-1), torch.ones(2, 3, 1))
    m2 = elliptical_scale(v, vp, grad=True)
    assert m2.requires_grad
    m2.sum().backward()
    assert v.grad.abs().sum() > 0


def tiny(variant, **kw):
    return create_model(f"deit-tiny-{variant}", num_classes=5, depth=3, embed_dim=32, num_heads=4, img_size=32,
                        patch_size=8, **kw)


def test_adaptive_elliptical_changes_input_gradient():
    torch.manual_seed(0)
    model = tiny("elliptical")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    g_fixed = torch.autograd.grad(model(x).sum(), x)[0]
    assert set_elliptical_adaptive(model, True) == 3
    g_adapt = torch.autograd.grad(model(x).sum(), x)[0]
    assert (g_fixed - g_adapt).abs().max() > 0
    set_elliptical_adaptive(model, False)
    torch.testing.assert_close(torch.autograd.grad(model(x).sum(), x)[0], g_fixed)


@pytest.mark.parametrize("variant", list(ATTENTION_VARIANTS))
def test_model_train_eval_autocast_and_input_grad(variant):
    torch.manual_seed(0)
    model = tiny(variant)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model.train()
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_elliptical_models_do_not_share_state():
    """Two elliptical models built one after the other each get their own value chain."""
    a, b = tiny("elliptical"), tiny("elliptical")
    la = [m for m in a.modules() if isinstance(m, EllipticalAttention)]
    lb = [m for m in b.modules() if isinstance(m, EllipticalAttention)]
    assert [m.layer_index for m in la] == [0, 1, 2] == [m.layer_index for m in lb]
    assert la[0].chain is not lb[0].chain
    assert all(m.chain is la[0].chain for m in la) and all(m.chain is lb[0].chain for m in lb)


@pytest.mark.parametrize("variant", ["elliptical", "elliptical-quest"])
def test_two_elliptical_models_interleaved_equal_each_alone(variant):
    """State lives on the model instance: running two models block-interleaved (a's forward from inside b's) or
    one after the other gives each model's own outputs, and a model's output does not depend on the other's input."""
    a = tiny(variant)
    b = create_model(f"deit-tiny-{variant}", num_classes=5, depth=4, embed_dim=32, num_heads=4, img_size=32,
                     patch_size=8)  # another depth: a chain shared with `a` would end b's forward at block 2
    xa, xb = torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        alone_a, alone_b = a(xa), b(xb)
        inner = {}
        hook = b.net.blocks[1].attn.register_forward_hook(lambda *_: inner.update(a=a(xa)))  # a runs mid-b
        inter_b = b(xb)
        hook.remove()
        torch.testing.assert_close(inner["a"], alone_a, rtol=0, atol=0)
        torch.testing.assert_close(inter_b, alone_b, rtol=0, atol=0)
        torch.testing.assert_close(a(xa), alone_a, rtol=0, atol=0)
    assert a.net.blocks[0].attn.chain.prev_v is None and b.net.blocks[0].attn.chain.prev_v is None


def test_deepcopy_of_an_elliptical_model_gets_its_own_chain():
    import copy

    a = tiny("elliptical")
    c = copy.deepcopy(a)
    assert c.net.blocks[0].attn.chain is not a.net.blocks[0].attn.chain
    assert c.net.blocks[2].attn.chain is c.net.blocks[0].attn.chain
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(c(x), a(x), rtol=0, atol=0)


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = tiny("elliptical-quest")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model)(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
