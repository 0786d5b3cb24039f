"""Attention variants as drop-in replacements for timm's ViT `Attention` (pass the class as `attn_layer=`).

Every variant keeps timm's parameter names (`qkv`, `proj`, and `q_norm`/`k_norm` where timm has them), so timm ViT
weights load unchanged. Each variant only decides the operands of softmax(scale · q kᵀ) v; `forward` hands them to
`F.scaled_dot_product_attention`, so the fused kernels are used on GPU. With q, k, v per head (head dim d):

    standard          softmax(q kᵀ / √d)                              (timm's Attention)
    quest             softmax(q k̂ᵀ), k̂ = k/‖k‖                         query norm = per-token inverse temperature
    qnorm             softmax(q̂ kᵀ), q̂ = q/‖q‖
    qknorm            softmax(LN(q) LN(k)ᵀ / √d)                       (timm's qk_norm=True)
    qknorm-hs         softmax(c_h · q̂ k̂ᵀ)                              c_h: `qk_scale` [heads]
    qknorm-ds         softmax((q̂ ⊙ s_q)(k̂ ⊙ s_k)ᵀ)                     `q_scale`, `k_scale` [d]
    elliptical        softmax((q ⊙ m) kᵀ / √d), m from |v_l − v_{l−1}|  (block 0: m = 1)
    elliptical-quest  softmax((q ⊙ m) k̂ᵀ)

L2 normalisations take the norm in fp32 under autocast (eps 1e-6) and scale in the working dtype.

Fused: every normalisation and learnable scale is folded into ONE multiplication of q or k by a factor computed
in fp32 from small tensors (the norms [.., 1], c_h, s_q, s_k): qknorm-hs multiplies q by c_h/‖q‖ (not q/‖q‖ then
c_h), qknorm-ds q by s_q/‖q‖ and k by s_k/‖k‖; no full-size fp32 copy of q or k is made under autocast, and the
constant 1/√d stays in SDPA's `scale`. The operands (q, k, scale) themselves are unchanged — robench.diag reports
their norms — so folding s_k into q or 1/√d into m, which would change them, is not done. Same math; in fp32 the
results agree with the explicit definitions to float rounding (tests/test_attention.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from torch import nn

NORM_EPS = 1e-6


def inv_norm(t: torch.Tensor) -> torch.Tensor:
    """1 / max(‖t‖₂, 1e-6) over the head dim, shape [..., 1], in fp32 (safe under bf16/fp16 autocast)."""
    return torch.linalg.vector_norm(t, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(NORM_EPS).reciprocal()


def l2_normalize(t: torch.Tensor, factor: torch.Tensor | None = None) -> torch.Tensor:
    """t / max(‖t‖₂, 1e-6) over the head dim (times `factor`, broadcast against [..., d]): one multiplication of t
    in its own dtype by a factor computed in fp32 from the norms (safe under bf16/fp16 autocast)."""
    f = inv_norm(t)
    if factor is not None:
        f = f * factor.float()
    return t * f.to(t.dtype)


# name -> class, in registration (= `robench models`) order; filled by @register_attention below.
ATTENTION_VARIANTS: dict[str, type["VariantAttention"]] = {}
# "attn.<parameter>" -> the one variant that has it: tells which variant a checkpoint was trained with.
VARIANT_PARAMS: dict[str, str] = {}


def register_attention(name: str, *, params: dict[str, str] | None = None):
    """Class decorator: register an attention variant under `name` (models `<arch>-<name>`, `demo-…` excepted).

    `params` declares the parameters the variant adds to timm's Attention (which has `qkv` and `proj` only), as
    {parameter name: size}, the size one of "heads" or "head_dim" (per block). They let a checkpoint's variant be
    recognised (`robench.zoo.checkpoint`) and `robench models` count parameters without importing torch: the
    catalog (`robench.zoo.catalog`) reads these decorator calls from this file's source, so write `params` as a
    literal dict. The test suite checks the counts against models built on the meta device.
    """

    def deco(cls):
        cls.variant = name
        cls.extra_params = dict(params or {})
        ATTENTION_VARIANTS[name] = cls
        VARIANT_PARAMS.update({f"attn.{p}": name for p in cls.extra_params})
        return cls

    return deco


class VariantAttention(TimmAttention):
    """Base class: timm's Attention whose softmax operands are chosen by `attention_inputs`."""

    variant = "standard"
    extra_params: dict[str, str] = {}  # set by @register_attention

    def qkv_heads(self, x: torch.Tensor):
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.q_norm(q), self.k_norm(k), v

    def attention_inputs(self, x: torch.Tensor):
        """(q, k, v, scale) such that the attention output is softmax(scale · q kᵀ) v. Does not change any state."""
        q, k, v = self.qkv_heads(x)
        return q, k, v, self.scale

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v, scale = self.attention_inputs(x)
        self.after_attention(v)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0,
            is_causal=is_causal, scale=scale,
        )
        o = self.norm(o.transpose(1, 2).reshape(B, N, self.attn_dim))
        if self.gate is not None:
            o = o * self.gate(x).sigmoid()
        return self.proj_drop(self.proj(o))

    def after_attention(self, v: torch.Tensor) -> None:
        """Hook for variants that carry state from block to block (elliptical)."""


@register_attention("standard")
class StandardAttention(VariantAttention):
    """timm's Attention: softmax(q kᵀ / √d)."""


@register_attention("quest")
class QuestAttention(VariantAttention):
    """QUEST: keys on the unit sphere; the query norm alone sets how sharp each token's attention is."""


    def attention_inputs(self, x):
        q, k, v = self.qkv_heads(x)
        return q, l2_normalize(k), v, 1.0


@register_attention("qnorm")
class QNormAttention(VariantAttention):

    def attention_inputs(self, x):
        q, k, v = self.qkv_heads(x)
        return l2_normalize(q), k, v, 1.0


@register_attention("qknorm", params={"q_norm.weight": "head_dim", "q_norm.bias": "head_dim",
                                      "k_norm.weight": "head_dim", "k_norm.bias": "head_dim"})
class QKNormAttention(VariantAttention):
    """timm's LayerNorm QK-norm (qk_norm=True) with the usual 1/√d scale."""


    def __init__(self, dim, num_heads=8, qk_norm=False, norm_layer=None, **kwargs):
        super().__init__(dim, num_heads=num_heads, qk_norm=True, norm_layer=norm_layer or nn.LayerNorm, **kwargs)


@register_attention("qknorm-hs", params={"qk_scale": "heads"})
class QKNormHeadScaleAttention(VariantAttention):
    """softmax(c_h q̂ k̂ᵀ): L2-normalised q and k, one learnable inverse temperature per head (init √d)."""


    def __init__(self, dim, num_heads=8, **kwargs):
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.qk_scale = nn.Parameter(torch.full((num_heads,), math.sqrt(self.head_dim)))

    def attention_inputs(self, x):
        q, k, v = self.qkv_heads(x)
        return l2_normalize(q, self.qk_scale.view(1, -1, 1, 1)), l2_normalize(k), v, 1.0


@register_attention("qknorm-ds", params={"q_scale": "head_dim", "k_scale": "head_dim"})
class QKNormDimScaleAttention(VariantAttention):
    """softmax((q̂ ⊙ s_q)(k̂ ⊙ s_k)ᵀ): learnable per-dimension scales, each initialised to d^¼ (logits in ±√d)."""


    def __init__(self, dim, num_heads=8, **kwargs):
        super().__init__(dim, num_heads=num_heads, **kwargs)
        init = self.head_dim ** 0.25
        self.q_scale = nn.Parameter(torch.full((self.head_dim,), init))
        self.k_scale = nn.Parameter(torch.full((self.head_dim,), init))

    def attention_inputs(self, x):
        q, k, v = self.qkv_heads(x)
        return l2_normalize(q, self.q_scale), l2_normalize(k, self.k_scale), v, 1.0


def elliptical_scale(v: torch.Tensor, v_prev: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Per sample and head: m_d = mean over tokens |v − v_prev|_d, divided by max_d m. Shape [B, H, 1, d].

    Where v == v_prev (max m = 0) m falls back to 1. Without `grad`, m is a constant for autograd (as the
    authors computed it); with `grad`, gradients flow through m (adaptive attacks).
    """
    if not grad:
        v, v_prev = v.detach(), v_prev.detach()
    m = (v.float() - v_prev.float()).abs().mean(dim=2, keepdim=True)
    m_max = m.amax(dim=-1, keepdim=True)
    m = torch.where(m_max > 0, m / m_max.clamp_min(torch.finfo(m.dtype).tiny), torch.ones_like(m))
    return m.to(v.dtype)


class ValueChain:
    """The value tensor of the previous block, shared by the elliptical attention layers of ONE model instance
    (set up by `link_value_chain`, which `robench.zoo.registry.build_net` calls on every model it builds)."""

    def __init__(self, depth: int = 1):
        self.depth = depth  # number of linked attention layers
        self.prev_v = None


@register_attention("elliptical")
class EllipticalAttention(VariantAttention):
    """Elliptical attention (Nielsen et al., NeurIPS 2024): Mahalanobis-scaled queries, q ← q ⊙ m.

    Block 0 is standard attention. Set `grad_through_scale = True` (see `set_elliptical_adaptive`) to let
    gradients flow through m. The layers of one model share a `ValueChain` and know their block index: both are
    set per model instance by `link_value_chain(model)` (timm builds every block's attention with the same
    arguments, so the index cannot come through the constructor). An unlinked layer is block 0 of a one-layer
    chain of its own, i.e. standard attention.
    """

    normalize_keys = False

    def __init__(self, dim, num_heads=8, **kwargs):
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.layer_index = 0
        self.chain = ValueChain()
        self.grad_through_scale = False

    def scale_m(self, v: torch.Tensor):
        prev = self.chain.prev_v
        if self.layer_index == 0 or prev is None or prev.shape != v.shape:
            return None
        return elliptical_scale(v, prev, grad=self.grad_through_scale)

    def attention_inputs(self, x):
        q, k, v = self.qkv_heads(x)
        m = self.scale_m(v)
        if self.normalize_keys:
            return (q if m is None else q * m), l2_normalize(k), v, 1.0
        return (q if m is None else q * m), k, v, self.scale

    def after_attention(self, v):
        chain = self.chain
        chain.prev_v = None if self.layer_index == chain.depth - 1 else v  # the last block ends the forward


@register_attention("elliptical-quest")
class EllipticalQuestAttention(EllipticalAttention):
    normalize_keys = True


def link_value_chain(layers) -> int:
    """Give the elliptical layers of one model (a module, or its layers in block order) one fresh `ValueChain`
    and their block indices 0, 1, …; the chain belongs to this model instance only. Returns the number linked."""
    mods = layers.modules() if isinstance(layers, nn.Module) else layers
    linked = [m for m in mods if isinstance(m, EllipticalAttention)]
    chain = ValueChain(depth=len(linked))
    for i, m in enumerate(linked):
        m.layer_index, m.chain = i, chain
    return len(linked)


def attention_layer(variant: str) -> type[VariantAttention]:
    """The class to pass as timm's `attn_layer=`; call `link_value_chain(model)` on the model built with it."""
    return ATTENTION_VARIANTS[variant]


def set_elliptical_adaptive(model: nn.Module, enabled: bool = True) -> int:
    """Let gradients flow through the elliptical scale m (adaptive attacks). Returns the number of layers set."""
    n = 0
    for mod in model.modules():
        if isinstance(mod, EllipticalAttention):
            mod.grad_through_scale = bool(enabled)
            n += 1
    return n
