"""`run_attack`: one attack spec on one batch, at every eps of the spec, with invariants checked on every batch.

Protocols
- standard (default): images in [0, 1], eps in pixel units, every iterate clipped to [0, 1], true labels. A sample
  is robust at an eps iff it is correctly classified on the clean input AND after the attack.
- paper (NON-STANDARD, to reproduce published tables of the QUEST / Elliptical papers): the attack runs on the
  normalised image z = (x − mean)/std against `model.net`, eps is applied in that normalised space (eps = 1/255
  there is ≈ 0.23/255 in pixels), nothing is clipped, and the attack labels are the model's clean predictions.
  Every sample is attacked (also clean-misclassified ones), there is no early exit within the steps (the final
  iterate is evaluated, as torchattacks does), and the sample counts as robust iff the prediction on the final
  adversarial input equals the TRUE label. For AutoAttack the normalised image goes into pyautoattack unchanged,
  so its internal [0, 1] clamp acts on normalised values — as in the authors' code.

The protocol lives here, for every kind (a kind only produces adversarial images, robench.attack.base.AttackKind):
run_attack does the clean pass (predictions, fp32-confirmed under autocast, and the zero-gradient flag), hands the
kind the samples the protocol attacks (clean-correct ones; every one under the paper protocol or for a
`whole_batch` kind), validates every adversarial batch the kind returns, predicts on it (low-precision hits
confirmed in fp32) and sets the robust flags. FGSM/PGD run every eps at once through the kind's `fused` hook
(their own gating, confirmation and per-iterate checks on the device); the core still validates the final
images they return.

Invariants (every adversarial batch and every FGSM/PGD iterate, not only in tests): ‖x_adv − x‖ ≤ eps + 1e-6 in the
attack norm (in the attacked space; FGSM/PGD iterates are checked on the device in the working dtype with a
tolerance sound for it, and the attack raises once at its end — `strict=True` checks every iterate in float64),
x_adv ∈ [0, 1] (standard protocol), finite values, model in eval mode before and after, no gradient left on any
parameter. A violation raises `AttackInvariantError` (an AssertionError).

Under autocast (`amp_dtype` bf16/fp16) every verdict "misclassified" of a low-precision forward (clean pass, any
iterate, AutoAttack / torchattacks outputs) is confirmed by an fp32 forward before it counts;
`info["rejected_hits"]` (one count per eps) says how many were rejected.

Kinds are dispatched through the registry of robench.attack.base; each kind's module registers itself.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from robench.attack.base import (AttackInvariantError, AttackKind, AttackResult, Checker, RunContext,
                                 check_adversarial, clean_pass, confirm, get_kind)
from robench.attack.spec import AttackSpec
from robench.errors import RobenchError


class _Autocast(nn.Module):
    """model under autocast, logits returned in fp32 (gradients w.r.t. the fp32 input)."""

    def __init__(self, net: nn.Module, dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.net(x).float()


@contextlib.contextmanager
def attack_mode(model: nn.Module, spec: AttackSpec):
    """Guard one attack: eval mode required, parameters frozen (no grads), elliptical adaptive flag if asked."""
    if model.training:
        raise AttackInvariantError("model is in training mode; attacks run on a model in eval mode (model.eval())")
    weights = list(model.named_parameters())
    had_grad = {n for n, p in weights if p.grad is not None}
    req = [p.requires_grad for _, p in weights]
    n_ell = 0
    if spec.adaptive:
        from robench.zoo.attention import set_elliptical_adaptive  # local: timm's import (~3.6 s), adaptive only

        n_ell = set_elliptical_adaptive(model, True)
        if n_ell == 0:
            raise RobenchError(f"attack {spec.name} is adaptive (grad through elliptical m) but the model has no "
                               "elliptical attention layers")
    for _, p in weights:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for (_, p), r in zip(weights, req):
            p.requires_grad_(r)
        if n_ell:
            from robench.zoo.attention import set_elliptical_adaptive

            set_elliptical_adaptive(model, False)
    if model.training:
        raise AttackInvariantError(f"attack {spec.name} left the model in training mode")
    left = [n for n, p in weights if p.grad is not None and n not in had_grad]
    if left:
        raise AttackInvariantError(f"attack {spec.name} left gradients on parameters: {', '.join(left[:3])}")


def _space(model, x, spec):
    """(function to attack, clean input in the attacked space, clip to [0,1]?)."""
    if spec.protocol == "paper":
        if not hasattr(model, "normalize") or not hasattr(model, "net"):
            raise RobenchError("the paper protocol needs a robench model (with .normalize and .net)")
        return model.net, model.normalize(x).detach(), False
    return model, x.detach(), True


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, seeds, *,
               amp_dtype: torch.dtype | None = None, max_rows: int | None = None,
               clean_pred: torch.Tensor | None = None, keep_adv: bool = False, strict: bool = False,
               compile: bool = False, compact_every: int | None = None) -> AttackResult:
    """Attack a batch at every eps of `spec`. x: (B,3,H,W) in [0,1]; y: true labels; seeds: one int per sample.

    Random draws for sample i come only from seeds[i] (FGSM/PGD), so a sample's outcome does not depend on the
    batch it is in. AutoAttack and torchattacks draw from one seed derived from all seeds of the batch (their
    random starts are batched), so their results depend on the chunk: keep chunk boundaries fixed.
    `amp_dtype` (bf16/fp16) runs forward passes under autocast; gradients are taken in fp32 w.r.t. the input, and
    every low-precision "misclassified" is confirmed by an fp32 forward (info["rejected_hits"] counts rejections).
    `max_rows` bounds how many (sample, eps) rows go through the model at once (memory).
    `clean_pred`: the model's clean predictions if the caller has them (FGSM/PGD then skip misclassified samples
    without any forward pass; their zero_grad is reported False).
    `keep_adv` (kinds with keeps_adv: FGSM/PGD): info["x_adv"] holds the adversarial images [n_eps, B, C, H, W] (in the attack's space:
    pixels for the standard protocol), x itself for rows that were not attacked.
    `strict`: check every FGSM/PGD iterate in float64 and raise at once (else on the device, raised at the end).
    `compile`: torch.compile the FGSM/PGD update step. `compact_every`: early-exit compaction period (steps).
    """
    if x.ndim != 4 or y.shape != (x.shape[0],) or len(seeds) != x.shape[0]:
        raise RobenchError(f"run_attack: expected x (B,C,H,W), y (B,), B seeds; got {tuple(x.shape)}, "
                           f"{tuple(y.shape)}, {len(seeds)} seeds")
    if spec.protocol == "standard" and (x.min() < 0 or x.max() > 1):
        raise RobenchError("run_attack: images must be in [0, 1] (the model normalises them itself)")
    impl = get_kind(spec.kind)
    with attack_mode(model, spec):
        f, x0, clip = _space(model, x, spec)
        f32 = None
        if amp_dtype is not None:
            f, f32 = _Autocast(f, amp_dtype), f
        ctx = RunContext(clip=clip, f32=f32, batch_seeds=tuple(int(s) for s in seeds), max_rows=max_rows,
                         clean_pred=clean_pred, keep_adv=keep_adv, strict=strict, compile=compile,
                         compact_every=compact_every)
        if impl.fused is not None:
            res = impl.fused(f, x0, y, spec, seeds, ctx)
            x_adv = res.info.pop("x_adv", None)
            if x_adv is None or tuple(x_adv.shape) != (len(spec.eps), *x0.shape):
                raise AttackInvariantError(f"{spec.name}: kind '{impl.name}' (fused) must return its adversarial "
                                           "images in info['x_adv'] [n_eps, B, ...]")
            _validate(x_adv, x0, spec, clip, strict)
            if keep_adv and impl.keeps_adv:
                res.info["x_adv"] = x_adv
        else:
            res = _run_per_eps(impl, f, x0, y, spec, seeds, ctx)
    res.info.update(attack=spec.name, label=spec.label, protocol=spec.protocol, adaptive=spec.adaptive,
                    eps=list(spec.eps), amp=str(amp_dtype).replace("torch.", "") if amp_dtype else None)
    return res


def _validate(x_adv: torch.Tensor, x0: torch.Tensor, spec: AttackSpec, clip: bool, strict: bool, eps=None):
    """Every adversarial batch a kind returns: finite, inside the eps ball in the spec's norm, in [0, 1] if
    clipping. x_adv: [n_eps, B, ...] for every eps of the spec (on the device, with a tolerance sound for the
    working dtype, one host sync; float64 if strict), or [B, ...] at one `eps` (float64)."""
    if eps is not None:
        if x_adv.shape != x0.shape:
            raise AttackInvariantError(f"{spec.name}: the attack returned images of shape {tuple(x_adv.shape)} "
                                       f"for a batch of shape {tuple(x0.shape)}")
        return check_adversarial(x_adv, x0, eps, spec.norm, clip, spec.name)
    check = Checker(spec.norm, clip, spec.name, x0, max(spec.eps), strict=strict)
    for k, e in enumerate(spec.eps):
        check(x_adv[k], x0, torch.full((x0.shape[0],), float(e), dtype=x0.dtype, device=x0.device))
    check.finish()


def _run_per_eps(impl: AttackKind, f, x0, y, spec: AttackSpec, seeds, ctx: RunContext) -> AttackResult:
    """The protocol around a kind that makes images at one eps: clean pass, gate, attack, validate, confirm."""
    E, B = len(spec.eps), x0.shape[0]
    paper = spec.protocol == "paper"
    pred0, zero_grad, rejected_clean = clean_pass(f, x0, y, f32=ctx.f32)
    correct = pred0 == y
    labels = pred0 if paper else y
    gate = torch.ones_like(correct) if paper or impl.whole_batch else correct
    sub = gate.nonzero().squeeze(1)
    xs, ys = x0[sub], y[sub]
    seeds_sub = [seeds[i] for i in sub.tolist()]
    robust = torch.zeros(E, B, dtype=torch.bool, device=x0.device)
    adv_pred = pred0.expand(E, B).clone()
    rejected, per_eps = [], [None] * E
    keep = x0.detach().expand(E, *x0.shape).clone() if ctx.keep_adv and impl.keeps_adv else None
    for k, e in enumerate(spec.eps):
        if len(sub) == 0:
            rejected.append(rejected_clean)
            continue
        out = impl.attack(f, xs, labels[sub], float(e), spec, seeds_sub, ctx)
        x_adv, per_eps[k] = out if isinstance(out, tuple) else (out, None)
        _validate(x_adv, xs, spec, ctx.clip, True, eps=float(e))
        per_eps[k] = _check_support(x_adv, xs, per_eps[k], spec)
        if keep is not None:
            keep[k, sub] = x_adv.detach()
        with torch.no_grad():
            p = f(x_adv.detach()).argmax(1)
        p, rej = confirm(ctx.f32, x_adv, ys, p)
        rejected.append(rejected_clean + (0 if rej is None else int(rej.sum())))
        adv_pred[k, sub] = p
        robust[k, sub] = (p == ys) & (correct[sub] | paper)
    info = {"clean_correct": correct.tolist(), "rejected_hits": rejected}
    if any(d is not None for d in per_eps):
        info["per_eps"] = [d or {} for d in per_eps]
    if keep is not None:
        info["x_adv"] = keep
    return AttackResult(robust=robust, adv_pred=adv_pred, zero_grad=zero_grad, info=info)


def _check_support(x_adv, x0, info, spec: AttackSpec):
    """A kind that confines its perturbation (info["support"], bool broadcastable to x): zero outside it."""
    if not info or "support" not in info:
        return info
    info = dict(info)
    support = info.pop("support").to(x_adv.device).expand_as(x_adv)
    outside = (x_adv.detach() != x0.detach()) & ~support
    if outside.any():
        raise AttackInvariantError(f"{spec.name}: the perturbation is not zero outside the attacked patches "
                                   f"({int(outside.sum())} values changed)")
    return info or None


def check_attack_models(specs, model, label: str) -> None:
    """The kinds' checks of a built model (e.g. a token attack needs a ViT), before any result is written."""
    for spec in specs:
        check = get_kind(spec.kind).check_model
        if check is not None:
            check(spec, model, label)
