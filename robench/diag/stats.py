"""Attention diagnostics: query/key norms, attention entropy and peakedness, elliptical scales, token collapse.

`inspect_model(model, batches)` runs the model unchanged (fused attention) and reads everything through hooks:
a forward PRE-hook on each attention layer recomputes that layer's explicit attention map from
`attention_inputs(x)` (which changes no state), and a forward hook on the layer's parent block reads the block's
output tokens. Rows are tidy: (layer, head, stat, value); head = -1 marks layer-level stats.

Norm conventions (identical for every variant, so models can be compared):
- q_norm_* : ‖scale · q‖ — the effective query with the softmax scale folded in, so logits = q_eff · k.
  For QUEST this is the per-token inverse temperature; for standard attention it is ‖q‖/√d.
- k_norm_* : ‖k‖ of the key operand that enters the softmax (1 for QUEST/qknorm-hs by construction).
- q_raw_norm_*, k_raw_norm_* : norms of the qkv projection's output, before ANY normalisation (L2 or the
  LayerNorm of qknorm). For QUEST the raw key norm is what a shortcut token would grow under standard attention.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from torch import nn

from robench.errors import RobenchError
from robench.zoo.attention import EllipticalAttention, VariantAttention

NORM_STATS = ("mean", "max", "p50", "p95", "max_over_mean")
NORM_NAMES = ("q_norm", "k_norm", "q_raw_norm", "k_raw_norm")


def attention_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every attention layer robench can inspect (robench variants and timm's ViT Attention)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TimmAttention)]


def _inputs(mod: nn.Module, x: torch.Tensor):
    # timm's own Attention has the same operands as robench's standard variant
    if isinstance(mod, VariantAttention):
        return mod.attention_inputs(x)
    return (*VariantAttention.qkv_heads(mod, x), mod.scale)


def _raw_qk(mod: nn.Module, x: torch.Tensor):
    B, N, _ = x.shape
    qkv = mod.qkv(x).reshape(B, N, 3, mod.num_heads, mod.head_dim).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1]


def _query_rows(n: int, max_tokens: int | None) -> torch.Tensor | None:
    if max_tokens is None or max_tokens >= n:
        return None
    return torch.linspace(0, n - 1, max(int(max_tokens), 1)).round().long().unique()


class _LayerStats:
    """Accumulates one attention layer's statistics over batches."""

    def __init__(self):
        self.norms = defaultdict(list)  # name -> list of [H, tokens] tensors
        self.m = []                     # list of [H, B*d] tensors (elliptical)
        self.sums = defaultdict(float)  # (stat, head) -> sum over samples or query tokens
        self.counts = defaultdict(int)
        self.collapse_sum, self.collapse_n = 0.0, 0

    def add_attention(self, mod: nn.Module, x: torch.Tensor, attn_mask, max_tokens):
        q, k, v, scale = _inputs(mod, x)
        q, k = q.float() * scale, k.float()
        q_raw, k_raw = _raw_qk(mod, x)
        for name, t in zip(NORM_NAMES, (q, k, q_raw, k_raw)):
            self.norms[name].append(t.float().norm(dim=-1).transpose(0, 1).reshape(t.shape[1], -1).cpu())
        logits = q @ k.transpose(-2, -1)
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else logits + attn_mask.float()
        rows = _query_rows(logits.shape[-2], max_tokens)
        if rows is not None:
            logits = logits[:, :, rows.to(logits.device)]
        p = logits.softmax(dim=-1)  # [B, H, queries, keys]
        B, H, Q, _ = p.shape
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1)
        received = p.sum(-2) / Q  # share of the total attention each key receives
        for h in range(H):
            self._add("attn_entropy_mean", h, entropy[:, h].sum().item(), B * Q)
            self._add("attn_max_mean", h, p[:, h].amax(-1).sum().item(), B * Q)
            self._add("top_key_share", h, received[:, h].amax(-1).sum().item(), B)
        if isinstance(mod, EllipticalAttention):
            m = mod.scale_m(v)
            m = torch.ones(B, H, 1, v.shape[-1]) if m is None else m.float()  # block 0: m = 1
            self.m.append(m.transpose(0, 1).reshape(H, -1).cpu())

    def add_block_output(self, out: torch.Tensor, max_tokens):
        rows = _query_rows(out.shape[1], max_tokens)
        if rows is not None:
            out = out[:, rows.to(out.device)]
        xn = F.normalize(out.float(), dim=-1)
        n = xn.shape[1]
        if n < 2:
            return
        gram = xn @ xn.transpose(1, 2)
        cos = (gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)) / (n * (n - 1))
        self.collapse_sum += cos.sum().item()
        self.collapse_n += len(cos)

    def _add(self, stat, head, value, count):
        self.sums[stat, head] += value
        self.counts[stat, head] += count

    def rows(self, layer: int) -> list[tuple]:
        out = []
        for name, chunks in self.norms.items():
            per_head = torch.cat(chunks, dim=1).numpy()
            for h, vals in enumerate(per_head):
                mean, mx = float(vals.mean()), float(vals.max())
                p50, p95 = np.percentile(vals, [50, 95])
                ratio = mx / mean if mean > 0 else float("nan")
                for stat, val in zip(NORM_STATS, (mean, mx, p50, p95, ratio)):
                    out.append((layer, h, f"{name}_{stat}", float(val)))
        for (stat, h), s in self.sums.items():
            out.append((layer, h, stat, s / self.counts[stat, h]))
        if self.m:
            for h, vals in enumerate(torch.cat(self.m, dim=1).numpy()):
                for stat, val in (("m_mean", vals.mean()), ("m_std", vals.std()), ("m_min", vals.min()),
                                  ("m_max", vals.max())):
                    out.append((layer, h, stat, float(val)))
        if self.collapse_n:
            out.append((layer, -1, "collapse_cos", self.collapse_sum / self.collapse_n))
        return out


def _images(batch):
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, dict):
        batch = batch.get("image", batch.get("x"))
    if not isinstance(batch, torch.Tensor):
        raise RobenchError(f"inspect_model: expected image tensors or (x, y, ...) tuples, got {type(batch).__name__}")
    return batch


@torch.no_grad()
def inspect_model(model: nn.Module, batches, *, max_tokens: int | None = None) -> pd.DataFrame:
    """Attention diagnostics of `model` over every sample of `batches` (tensors in [0,1], or (x, y, ...) tuples).

    Returns a tidy DataFrame with columns layer, head (-1 = layer-level), stat, value. Stats per layer and head:
    {q,k}_norm_* and {q,k}_raw_norm_* (mean, max, p50, p95, max_over_mean; see the module docstring),
    attn_entropy_mean (nats, per query token), attn_max_mean (largest weight per query), top_key_share (share of
    all attention that the most-attended key receives, per sample), and for elliptical variants m_mean, m_std,
    m_min, m_max (block 0 has m = 1). Per layer (head -1): collapse_cos, the mean pairwise cosine similarity of
    the block's output tokens. `max_tokens` caps the query rows (evenly spaced, first token included) used for the
    attention-map stats and the tokens used for collapse_cos; norms always use every token.
    """
    layers = attention_layers(model)
    if not layers:
        raise RobenchError("model has no attention layers (robench inspects ViT attention: robench variants and "
                           "timm's Attention)")
    stats = [_LayerStats() for _ in layers]
    handles = []
    modules = dict(model.named_modules())
    for (name, mod), st in zip(layers, stats):
        def pre_hook(mod, args, kwargs, st=st):
            x = args[0] if args else kwargs["x"]
            st.add_attention(mod, x, kwargs.get("attn_mask"), max_tokens)

        handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
        parent = modules.get(name.rpartition(".")[0]) if "." in name else None
        if parent is not None and parent is not model:
            def block_hook(block, args, out, st=st):
                st.add_block_output(out[0] if isinstance(out, (tuple, list)) else out, max_tokens)

            handles.append(parent.register_forward_hook(block_hook))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        n = 0
        for batch in batches:
            x = _images(batch).to(device=device, dtype=torch.float32)
            model(x)
            n += len(x)
        if n == 0:
            raise RobenchError("inspect_model: no samples (the batches were empty)")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows = [r for i, st in enumerate(stats) for r in st.rows(i)]
    return pd.DataFrame(rows, columns=["layer", "head", "stat", "value"]).astype({"layer": int, "head": int})


def layer_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per layer, one column per stat: head stats averaged over heads, plus the layer-level stats."""
    heads = df[df["head"] >= 0].groupby(["layer", "stat"])["value"].mean()
    layer = df[df["head"] < 0].groupby(["layer", "stat"])["value"].mean()
    return pd.concat([heads, layer]).unstack("stat")
