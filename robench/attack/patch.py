"""Patch-Fool — a token-patch attack on vision transformers (Fu, Zhang, Wu, Yu, Lin, "Patch-Fool: Are Vision
Transformers Always Robust Against Adversarial Perturbations?", ICLR 2022).

Distance: the perturbation is confined to k patches of the model's token grid (exactly zero elsewhere: the core
checks it, robench.attack.core) and, inside them,
  - mild:   L∞-bounded by eps (norm "Linf", eps in pixel units, as PGD);
  - sparse: unbounded within [0, 1] (stored as norm "Linf" with eps = 1: the pixel range; the cell's attack name
            says "sparse" and k is in its parameters).
Shapes: x (B, C, H, W) in [0, 1], y (B,) long, one seed per sample; result robust / adv_pred (n_eps, B).

Algorithm (per sample):
 1. choose the k patches: those that receive the most attention in the clean forward (summed over the chosen
    layers; per layer the mean over heads and queries of the attention paid to the patch's token), or k random
    patches drawn from the sample's seed (`select = "random"`, the paper's control);
 2. maximise  CE(f(x'), y) + attn_weight · A(x')  by sign-gradient steps on the chosen patches (step_size rule as
    PGD, optional uniform random start in the mild setting), where A is the attention the perturbed tokens
    receive, averaged over the chosen layers (robench.attack.attention_loss.attention_share: in [0, 1]).
    As in PGD a sample is broken as soon as an iterate is misclassified.

Choices against the paper (documented, README "Attacks that aim at attention"): the paper sums a per-layer
attention loss over layers with equal weights and balances it against CE with PCGrad and Adam (lr 0.2, 250
iterations). robench averages the layers with equal weights (the same direction as an equal-weight sum, on a
[0, 1] scale), adds it to CE with a fixed weight (`attn_weight`, default 1) and takes sign-gradient steps, so
that with k = all patches and the mild bound the attack is PGD plus an attention term (a strength check against
PGD, tests/test_attack_patch.py). Patch size and prefix tokens come from the model's timm `patch_embed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robench.attack.attention_loss import (attention_share, capture_attention, ce_loss, masked_pgd,
                                           require_tokens, token_grid)
from robench.attack.base import AttackKind, register_kind
from robench.attack.draws import row_keys, uniform_start
from robench.attack.spec import (AttackSpec, choice, flag, number, parse_step_size, positive_int, step_size,
                                 steps_replaced)
from robench.errors import RobenchError

MODES = ("sparse", "mild")
SELECTS = ("attention", "random")
PATCH_KEYS = ("k", "mode", "select", "layers", "attn_weight", "steps", "step_size", "random_start")


@dataclass(frozen=True)
class PatchOptions:
    k: int = 1
    mode: str = "sparse"
    select: str = "attention"
    layers: tuple | None = None  # attention layer indices (None: every layer)
    attn_weight: float = 1.0
    steps: int = 250
    step_size: str = "2.5*eps/steps"
    random_start: bool = False

    @property
    def fixed_eps(self) -> bool:
        """A sparse patch is unbounded within [0, 1]: its eps (1) is not a budget that --eps may replace."""
        return self.mode == "sparse"

    def identity(self) -> dict:
        return {"k": self.k, "mode": self.mode, "select": self.select,
                "layers": None if self.layers is None else list(self.layers), "attn_weight": self.attn_weight,
                "steps": self.steps, "step_size": self.step_size, "random_start": self.random_start}


def parse_layers(v, where: str):
    if v in (None, "all"):
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                                                         for i in v):
        raise RobenchError(f"{where}: layers must be \"all\" or a list of attention layer indices >= 0, got {v!r}")
    return tuple(sorted(set(v)))


def parse_patch(table: dict, common: dict, where: str) -> AttackSpec:
    mode = choice(table.get("mode", "sparse"), MODES, "Patch-Fool mode")
    if mode == "sparse":
        if "eps" in table and tuple(common["eps"]) != (1.0,):
            raise RobenchError(f"{where}: sparse Patch-Fool is unbounded within [0, 1] (eps = 1); drop 'eps' or "
                               "use mode = \"mild\"")
        if common["norm"] != "Linf":
            raise RobenchError(f"{where}: Patch-Fool bounds the patch in L∞ (norm = \"Linf\")")
        common = {**common, "eps": (1.0,)}
    elif common["norm"] != "Linf":
        raise RobenchError(f"{where}: mild Patch-Fool bounds the patch in L∞ (norm = \"Linf\")")
    w = number(table.get("attn_weight", 1.0), "attn_weight")
    if not w >= 0:
        raise RobenchError(f"{where}: attn_weight must be >= 0, got {table.get('attn_weight')!r}")
    opts = PatchOptions(k=positive_int(table.get("k", 1), "k"), mode=mode,
                        select=choice(table.get("select", "attention"), SELECTS, "Patch-Fool select"),
                        layers=parse_layers(table.get("layers"), where), attn_weight=w,
                        steps=positive_int(table.get("steps", 250)),
                        step_size=parse_step_size(table.get("step_size", "2.5*eps/steps")),
                        random_start=flag(table.get("random_start", False), "random_start"))
    if opts.random_start and mode == "sparse":
        raise RobenchError(f"{where}: random_start applies to the mild (eps-bounded) Patch-Fool only")
    return AttackSpec(**common, options=opts)


def label_patch(s: AttackSpec) -> str:
    o = s.options
    return (f"Patch-Fool {o.mode} k={o.k} ({o.select}-selected, {o.steps} steps"
            + (f", attention weight {o.attn_weight:g}" if o.attn_weight != 1 else "") + ")")


def static_patches(info) -> int | None:
    """Number of patches of a model from its static description (None: unknown before it is built)."""
    if info is None:
        return None
    p = (info.timm_kwargs or {}).get("patch_size")
    if p is None:
        m = re.search(r"patch(\d+)", str(info.timm_name or ""))
        p = int(m.group(1)) if m else None
    if not p:
        return None
    h, w = tuple(info.input_size)[1:3]
    return (h // p) * (w // p)


def _check_k(spec: AttackSpec, n: int, label: str):
    if spec.options.k > n:
        raise RobenchError(f"attack {spec.name}: k = {spec.options.k} patches but {label} has only {n} patches")


def check_info(spec: AttackSpec, info) -> None:
    """Resolve time: k within the model's patches where its static description tells them."""
    n = static_patches(info)
    if n is not None:
        _check_k(spec, n, f"model {info.name}")


def check_net(spec: AttackSpec, model, label: str) -> None:
    """Before the store opens: the built model is a ViT with timm's patch embedding, k and layers within it."""
    require_tokens(model, spec.name, f"model {label}")
    size = getattr(getattr(model, "info", None), "input_size", None)
    h, w = tuple(size)[1:3] if size and len(size) == 3 else (None, None)
    if h and w:
        _, _, gh, gw, _ = token_grid(model, torch.empty(1, 3, h, w, device="meta"))
        _check_k(spec, gh * gw, f"model {label}")
    from robench.attack.attention_loss import attention_modules

    n_layers = len(attention_modules(model))
    if spec.options.layers and max(spec.options.layers) >= n_layers:
        raise RobenchError(f"attack {spec.name}: layer {max(spec.options.layers)} but model {label} has "
                           f"{n_layers} attention layers (0..{n_layers - 1})")


def choose_patches(f, x, spec: AttackSpec, seeds, grid) -> torch.Tensor:
    """Bool [B, n_patches]: the k patches of each sample (most attended in the clean forward, or random)."""
    ph, pw, gh, gw, prefix = grid
    n, k, B = gh * gw, spec.options.k, x.shape[0]
    if k > n:
        raise RobenchError(f"attack {spec.name}: k = {k} patches but the images have {n} patches")
    if spec.options.select == "random":
        keys = row_keys(seeds, "start", 1, x.device)  # counter 1: not the mild start's draws
        score = uniform_start(keys, (n,), "Linf", torch.float32)
    else:
        with torch.no_grad(), capture_attention(f, spec.options.layers) as probs:
            f(x)
        score = torch.stack([p.mean(dim=(1, 2))[:, prefix:prefix + n] for p in probs]).sum(0)
    idx = score.topk(k, dim=1).indices
    return torch.zeros(B, n, dtype=torch.bool, device=x.device).scatter_(1, idx, True)


def patch_support(chosen: torch.Tensor, grid, shape) -> torch.Tensor:
    """Float [B, 1, H, W]: 1 on the pixels of the chosen patches, 0 elsewhere."""
    ph, pw, gh, gw, _ = grid
    m = chosen.view(-1, 1, gh, gw).float().repeat_interleave(ph, 2).repeat_interleave(pw, 3)
    return F.pad(m, (0, shape[-1] - gw * pw, 0, shape[-2] - gh * ph))


def attack_patch(f, x, y, eps, spec: AttackSpec, seeds, ctx):
    """Adversarial images at one eps (x: the samples the core attacks), with info["support"] for the core."""
    o = spec.options
    require_tokens(f, spec.name)
    grid = token_grid(f, x)
    chosen = choose_patches(f, x, spec, seeds, grid)
    support = patch_support(chosen, grid, x.shape)
    tokens = torch.cat([torch.zeros(x.shape[0], grid[4], device=x.device), chosen.float()], 1)

    def loss_fn(logits, labels, probs, rows):
        return ce_loss(logits, labels) + o.attn_weight * attention_share(probs, tokens[rows])

    start = None
    if o.random_start:
        u = uniform_start(row_keys(seeds, "start", 0, x.device), tuple(x.shape[1:]), "Linf", x.dtype)
        start = x + eps * u * support
    x_adv, _ = masked_pgd(f, x, y, support, eps, step_size(o.step_size, eps, o.steps), o.steps, loss_fn,
                          layers=o.layers, clip=ctx.clip, start=start)
    return x_adv, {"support": support.bool()}


PATCHFOOL = register_kind(AttackKind("patchfool", parse=parse_patch, attack=attack_patch, label=label_patch,
                                     order=5, keys=PATCH_KEYS, with_steps=steps_replaced,
                                     check_info=check_info, check_model=check_net))
