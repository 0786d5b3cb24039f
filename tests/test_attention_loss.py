"""Attention captured during an attacked forward (robench.attack.attention_loss): equal to timm's own attention
probabilities, and the attention losses' input gradients match finite differences (float64, tiny ViT)."""

import pytest
import torch

pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from robench.attack.attention_loss import (attention_modules, attention_share, capture_attention,  # noqa: E402
                                           cls_divergence, token_grid)
from robench.zoo.attention import attention_layer, link_value_chain  # noqa: E402


def tiny_vit(variant=None, dtype=torch.float64):
    torch.manual_seed(0)
    kw = {} if variant is None else {"attn_layer": attention_layer(variant)}
    net = VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=3, embed_dim=8, depth=2, num_heads=2,
                            mlp_ratio=1.0, **kw)
    link_value_chain(net)
    return net.to(dtype).eval()


def test_captured_attention_is_timms_softmax():
    """Reference: timm's non-fused path feeds softmax(q kᵀ·scale) into attn_drop; a hook there reads it."""
    net = tiny_vit()
    ref = []
    for m in attention_modules(net):
        m.fused_attn = False
        m.attn_drop.register_forward_hook(lambda mod, args, out: ref.append(args[0].detach()))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with capture_attention(net) as probs:
        net(x)
    assert len(probs) == len(ref) == 2
    for p, r in zip(probs, ref):
        assert p.shape == (2, 2, 5, 5)
        torch.testing.assert_close(p.double(), r, rtol=1e-5, atol=1e-6)  # captured in float32
    with capture_attention(net, layers=(1,)) as probs:
        net(x)
    assert len(probs) == 1
    torch.testing.assert_close(probs[0].double(), ref[-1], rtol=1e-5, atol=1e-6)
    assert token_grid(net, x) == (4, 4, 2, 2, 1)


def _share_fn(net, tokens):
    def fn(x):
        with capture_attention(net) as probs:
            net(x)
        return attention_share([p.double() for p in probs], tokens)
    return fn


@pytest.mark.parametrize("variant", [None, "qknorm"])  # elliptical: m is no_grad by design
def test_attention_losses_gradients_match_finite_differences(variant):
    net = tiny_vit(variant)  # float64: the capture keeps the model's float64
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    tokens = torch.tensor([[0, 1, 0, 0, 1], [0, 0, 0, 1, 0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(_share_fn(net, tokens), (x,), eps=1e-6, atol=1e-6)
    with torch.no_grad(), capture_attention(net, layers=(1,)) as ref:
        net(x.detach() * 0.5)

    def kl(x):
        with capture_attention(net, layers=(1,)) as probs:
            net(x)
        return cls_divergence(probs[0], ref[0].detach())

    assert torch.autograd.gradcheck(kl, (x,), eps=1e-6, atol=1e-6)


def test_share_and_divergence_closed_forms():
    # one layer, one head, two queries over three keys
    p = torch.tensor([[[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]]])
    assert attention_share([p], torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx((0.25 + 0.6) / 2)
    assert attention_share([p, p], torch.tensor([[1.0, 0.0, 1.0]])).item() == pytest.approx((0.75 + 0.4) / 2)
    ref = torch.tensor([[[[0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]]]])
    import math
    want = 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.25) + 0.5 * math.log(0.5 / 0.25)
    assert cls_divergence(p, ref).item() == pytest.approx(want)
    assert cls_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)
