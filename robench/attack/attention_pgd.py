"""PGD with an attention-targeted loss — the adaptive attack for attention variants whose logits are
temperature-invariant (QUEST, QK-norm kin): the projected gradient method of Madry et al. ("Towards Deep Learning
Models Resistant to Adversarial Attacks", ICLR 2018) on  CE + attn_weight · D,  where D is the divergence of the
CLS token's attention from its clean value, KL(P_clean[CLS] ‖ P[CLS]) averaged over heads, at the chosen layers
(default: the last attention layer), as in attention-disruption attacks on ViTs (e.g. Patch-Fool's attention term,
Fu et al., ICLR 2022; "Attention Deficit" style CLS-attention objectives).

Distance: L∞ (eps in pixel units), clipped to [0, 1]. Shapes: x (B, C, H, W) in [0, 1], y (B,) long, one seed per
sample; result robust / adv_pred (n_eps, B). A sample is broken as soon as an iterate is misclassified (as PGD).
With attn_weight = 0 it is PGD with the CE loss (same start, steps and step size).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from robench.attack.attention_loss import (attention_modules, capture_attention, ce_loss, cls_divergence,
                                           masked_pgd, require_tokens)
from robench.attack.base import AttackKind, register_kind
from robench.attack.draws import row_keys, uniform_start
from robench.attack.patch import parse_layers
from robench.attack.spec import AttackSpec, flag, number, parse_step_size, positive_int, step_size, steps_replaced
from robench.errors import RobenchError

KEYS = ("steps", "step_size", "random_start", "attn_weight", "layers")


@dataclass(frozen=True)
class AttentionPGDOptions:
    steps: int = 10
    step_size: str = "2.5*eps/steps"
    random_start: bool = True
    attn_weight: float = 1.0
    layers: tuple | None = None  # None: the last attention layer

    def identity(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = None if self.layers is None else list(self.layers)
        d["loss"] = "ce+cls-attention-kl"
        return d


def parse_attention_pgd(table: dict, common: dict, where: str) -> AttackSpec:
    if common["norm"] != "Linf":
        raise RobenchError(f"{where}: the attention PGD is L∞ only (norm = \"Linf\")")
    w = number(table.get("attn_weight", 1.0), "attn_weight")
    if not w >= 0:
        raise RobenchError(f"{where}: attn_weight must be >= 0, got {table.get('attn_weight')!r}")
    layers = table.get("layers")
    if layers == "all" or layers == []:
        raise RobenchError(f"{where}: layers of the attention PGD are attention layer indices (default: the last)")
    opts = AttentionPGDOptions(steps=positive_int(table.get("steps", 10)),
                               step_size=parse_step_size(table.get("step_size", "2.5*eps/steps")),
                               random_start=flag(table.get("random_start", True), "random_start"), attn_weight=w,
                               layers=None if layers is None else parse_layers(layers, where))
    return AttackSpec(**common, options=opts)


def label_attention_pgd(s: AttackSpec) -> str:
    o = s.options
    return f"PGD-{o.steps} L∞ + CLS-attention KL (weight {o.attn_weight:g})"


def check_model(spec: AttackSpec, model, label: str) -> None:
    require_tokens(model, spec.name, f"model {label}")
    n = len(attention_modules(model))
    if spec.options.layers and max(spec.options.layers) >= n:
        raise RobenchError(f"attack {spec.name}: layer {max(spec.options.layers)} but model {label} has {n} "
                           f"attention layers (0..{n - 1})")


def attack_attention_pgd(f, x, y, eps, spec: AttackSpec, seeds, ctx):
    o = spec.options
    require_tokens(f, spec.name)
    layers = o.layers if o.layers is not None else (len(attention_modules(f)) - 1,)
    with torch.no_grad(), capture_attention(f, layers) as ref:
        f(x)
    ref = [p.detach() for p in ref]

    def loss_fn(logits, labels, probs, rows):
        kl = torch.stack([cls_divergence(p, r[rows]) for p, r in zip(probs, ref)]).mean(0)
        return ce_loss(logits, labels) + o.attn_weight * kl

    start = None
    if o.random_start:
        start = x + eps * uniform_start(row_keys(seeds, "start", 0, x.device), tuple(x.shape[1:]), "Linf", x.dtype)
    x_adv, _ = masked_pgd(f, x, y, torch.ones_like(x[:, :1]), eps, step_size(o.step_size, eps, o.steps), o.steps,
                          loss_fn, layers=layers, clip=ctx.clip, start=start)
    return x_adv


ATTENTION_PGD = register_kind(AttackKind("pgd-attention", parse=parse_attention_pgd, attack=attack_attention_pgd,
                                         label=label_attention_pgd, order=6, keys=KEYS, with_steps=steps_replaced,
                                         check_model=check_model))
