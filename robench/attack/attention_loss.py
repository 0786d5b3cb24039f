"""Attention during an attacked forward, the attention-aware losses, and the masked sign-gradient loop that the
attention attacks (robench.attack.patch: Patch-Fool; robench.attack.attention_pgd: PGD with an attention loss)
share.

Capture: `capture_attention(f, layers)` puts a forward pre-hook on every timm `Attention` of `f` (robench's
variants and timm's own ViT attention). Each hook recomputes the layer's softmax operands from the block's input
(`attention_inputs`, which changes no state: elliptical layers read the previous block's value, as their forward
does) and keeps the probabilities P = softmax(scale · q kᵀ) [B, H, N, N] (query rows, key columns) in float32
(float64 for a float64 model),
WITH their graph: the attention losses are differentiable w.r.t. the input. An elliptical layer outside the
adaptive mode computes m under no_grad, so its captured P is as (non-)differentiable as its forward.

Token layout: `token_grid(f, x)` reads the patch size from the model's timm patch embedding (`patch_embed`,
`patch_size`) and the number of prefix tokens (class token) from `num_prefix_tokens`; patch p (row-major on the
grid) is token num_prefix + p. A model without a patch embedding has no tokens to aim at: RobenchError.

Losses (per row, to MAXIMISE; shapes: logits [B, classes], P per layer [B, H, N, N], tokens [B, N] 0/1):
    attention_share(P, tokens)   = mean over heads and queries of Σ_{j ∈ tokens} P[h, i, j]  (in [0, 1])
    cls_divergence(P, P_clean)   = mean over heads of KL(P_clean[h, 0, :] ‖ P[h, 0, :])     (CLS query row)
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from robench.errors import RobenchError


def attention_modules(f: nn.Module) -> list[nn.Module]:
    """The timm-style attention layers of f, in forward (= registration) order."""
    from timm.layers import Attention as TimmAttention  # local: timm's import takes seconds (attention attacks only)

    return [m for m in f.modules() if isinstance(m, TimmAttention)] if isinstance(f, nn.Module) else []


def _probs(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    from robench.zoo.attention import VariantAttention

    if isinstance(mod, VariantAttention):
        q, k, _, scale = mod.attention_inputs(x)
    else:  # timm's own Attention: robench's standard operands
        q, k, _ = VariantAttention.qkv_heads(mod, x)
        scale = mod.scale
    dt = torch.promote_types(q.dtype, torch.float32)  # float32 under autocast; float64 stays float64
    return (q.to(dt) * scale) @ k.to(dt).transpose(-2, -1)


@contextlib.contextmanager
def capture_attention(f: nn.Module, layers=None):
    """Yields a list that each forward of f fills with the attention probabilities of the chosen layers
    (indices into attention_modules(f); None: every layer), [B, H, N, N] each. Clear it between forwards."""
    mods = attention_modules(f)
    chosen = range(len(mods)) if layers is None else layers
    out: list[torch.Tensor] = []

    def hook(mod, args, kwargs):
        x = args[0] if args else kwargs["x"]
        out.append(_probs(mod, x).softmax(dim=-1))

    handles = [mods[i].register_forward_pre_hook(hook, with_kwargs=True) for i in chosen]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def patch_embedding(f: nn.Module):
    """(patch_embed module, number of prefix tokens) of a timm-style ViT inside f, or (None, 0)."""
    if not isinstance(f, nn.Module):
        return None, 0
    pe = next((m for n, m in f.named_modules() if n.split(".")[-1] == "patch_embed" and hasattr(m, "patch_size")),
              None)
    prefix = next((int(m.num_prefix_tokens) for m in f.modules() if hasattr(m, "num_prefix_tokens")), 0)
    return pe, prefix


def require_tokens(f: nn.Module, what: str, label: str = "the model") -> None:
    """RobenchError unless f is a ViT with timm's patch embedding and attention layers."""
    pe, _ = patch_embedding(f)
    if pe is None or not attention_modules(f):
        raise RobenchError(f"attack {what} aims at a ViT's tokens, but {label} has no timm patch embedding "
                           "('patch_embed' with 'patch_size') and attention layers: it is not a ViT")


def token_grid(f: nn.Module, x: torch.Tensor):
    """(patch height, patch width, grid rows, grid cols, prefix tokens) for images x [B, C, H, W]."""
    pe, prefix = patch_embedding(f)
    if pe is None:
        raise RobenchError("attention attacks need a ViT with timm's patch embedding ('patch_embed')")
    ps = pe.patch_size
    ph, pw = (ps, ps) if isinstance(ps, int) else (int(ps[0]), int(ps[1]))
    return ph, pw, x.shape[-2] // ph, x.shape[-1] // pw, prefix


def attention_share(probs: list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """[B]: share of the attention (mean over layers, heads and queries) paid to the tokens marked in [B, N]."""
    if not probs:
        raise RobenchError("no attention was captured (the model has no timm attention layers)")
    return torch.stack([(p.mean(dim=(1, 2)) * tokens).sum(-1) for p in probs]).mean(0)


def cls_divergence(probs: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """[B]: mean over heads of KL(ref[:, h, 0] ‖ probs[:, h, 0]), the CLS query's attention against a reference."""
    p, r = probs[:, :, 0].clamp_min(1e-30), ref[:, :, 0].clamp_min(1e-30)
    return (r * (r.log() - p.log())).sum(-1).mean(1)


def masked_pgd(f, x, y, support, eps: float, alpha: float, steps: int, loss_fn, layers=None, clip=True,
               start=None):
    """Sign-gradient ascent of loss_fn(logits, labels, probs, rows) [R] on x + support ⊙ δ, ‖δ‖∞ ≤ eps (support
    [B,1,H,W] or [B,C,H,W] 0/1: the perturbation is exactly 0 outside it), clipped to [0, 1]; `rows` are the
    batch indices of the rows still attacked. As PGD: a row is broken as soon as an iterate is misclassified,
    that iterate is returned and the row leaves the batch (each row's gradient is its own: the outcome does not
    depend on the others). start: first iterate (inside the box), else x. Returns (x_adv [B, ...], broken [B])."""
    s = support.to(x.dtype).expand_as(x)
    lo, hi = x - eps * s, x + eps * s
    if clip:
        lo, hi = lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)
    xc = (x if start is None else torch.minimum(torch.maximum(start, lo), hi)).detach().clone()
    out = xc.clone()
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    act = torch.arange(x.shape[0], device=x.device)
    for t in range(steps + 1):
        if act.numel() == 0:
            break
        xa = xc[act].clone().requires_grad_(t < steps)
        with capture_attention(f, layers) as probs, torch.set_grad_enabled(t < steps):
            logits = f(xa)
            loss = loss_fn(logits, y[act], probs, act) if t < steps else None
        hit = logits.detach().argmax(1) != y[act]
        out[act] = xa.detach()
        broken[act[hit]] = True
        if t == steps:
            break
        g, = torch.autograd.grad(loss.sum(), xa)
        keep = ~hit
        act = act[keep]
        xc[act] = torch.minimum(torch.maximum(xa.detach()[keep] + alpha * g[keep].sign(), lo[act]), hi[act])
    return out, broken


def ce_loss(logits, y):
    return F.cross_entropy(logits.float(), y, reduction="none")
