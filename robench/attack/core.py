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

from robench.attack.base import (TOL, AttackInvariantError, AttackKind, AttackResult, Checker, RunContext,
                                 check_adversarial, clean_pass, confidence, confirm, get_kind, lp_norm,
                                 unattacked_confidence)
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
            if res.adv_conf is None:  # a kind may fill it from its own final logits (saves this forward)
                _final_confidence(f, x_adv, y, res)
            if keep_adv and impl.keeps_adv:
                res.info["x_adv"] = x_adv
        elif impl.min_norm:
            res = _run_min_norm(impl, f, x0, y, spec, seeds, ctx)
        else:
            res = _run_per_eps(impl, f, x0, y, spec, seeds, ctx)
    res.info.update(attack=spec.name, label=spec.label, protocol=spec.protocol, adaptive=spec.adaptive,
                    eps=list(spec.eps), amp=str(amp_dtype).replace("torch.", "") if amp_dtype else None)
    return res


def _final_confidence(f, x_adv: torch.Tensor, y: torch.Tensor, res: AttackResult) -> None:
    """The confidence of each final prediction (res.adv_conf, res.adv_nll [n_eps, B]) for kinds that return their
    images: one no-grad forward of each eps's final images (the clean image where a row was not attacked)."""
    conf, nll = torch.empty(res.adv_pred.shape, device=y.device), torch.empty(res.adv_pred.shape, device=y.device)
    with torch.no_grad():
        for k in range(x_adv.shape[0]):
            conf[k], nll[k] = confidence(f(x_adv[k].detach()), res.adv_pred[k], y)
    res.adv_conf, res.adv_nll = conf, nll


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
    adv_conf, adv_nll = unattacked_confidence(f, x0, y, pred0, gate, E)
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
            logits = f(x_adv.detach())
        p, rej = confirm(ctx.f32, x_adv, ys, logits.argmax(1))
        rejected.append(rejected_clean + (0 if rej is None else int(rej.sum())))
        adv_pred[k, sub] = p
        adv_conf[k, sub], adv_nll[k, sub] = confidence(logits, p, ys)
        robust[k, sub] = (p == ys) & (correct[sub] | paper)
    info = {"clean_correct": correct.tolist(), "rejected_hits": rejected}
    if any(d is not None for d in per_eps):
        info["per_eps"] = [d or {} for d in per_eps]
    if keep is not None:
        info["x_adv"] = keep
    return AttackResult(robust=robust, adv_pred=adv_pred, zero_grad=zero_grad, info=info, adv_conf=adv_conf,
                        adv_nll=adv_nll)


# ---- minimum-norm kinds (FMN): one run, the per-sample eps* -------------------------------------------------------
EPS_STAR_RTOL = 1e-5  # the kind's eps* vs the norm of its image recomputed in float64 (fp32 rounding of x + δ − x)


def _run_min_norm(impl: AttackKind, f, x0, y, spec: AttackSpec, seeds, ctx: RunContext) -> AttackResult:
    """The protocol around a minimum-norm kind: clean pass, gate on clean-correct samples (eps* = 0 for the others),
    one attack, then every returned image checked: finite and in [0, 1], and where the kind claims an adversarial
    its norm equals the claimed eps*. eps* stored is the float64 norm of the image; a claimed hit that the model
    (fp32 when under autocast) classifies correctly is rejected (eps* = inf, counted in rejected_hits)."""
    B = x0.shape[0]
    pred0, zero_grad, rejected_clean = clean_pass(f, x0, y, f32=ctx.f32)
    correct = pred0 == y
    sub = correct.nonzero().squeeze(1)
    eps_star = torch.zeros(B, dtype=torch.float64, device=x0.device)
    adv_pred = pred0.clone()
    rejected = rejected_clean
    if len(sub):
        xs, ys = x0[sub], y[sub]
        x_adv, info = impl.attack(f, xs, ys, float("inf"), spec, [seeds[i] for i in sub.tolist()], ctx)
        claimed = info["eps_star"].to(device=x0.device, dtype=torch.float64)
        _validate(x_adv, xs, spec, ctx.clip, True, eps=float("inf"))
        norms = lp_norm(x_adv.detach().double() - xs.detach().double(), spec.norm)
        hit = torch.isfinite(claimed)
        off = hit & ((norms - claimed).abs() > TOL + EPS_STAR_RTOL * claimed.abs().nan_to_num(posinf=0))
        if off.any():
            i = int(off.nonzero()[0])
            raise AttackInvariantError(f"{spec.name}: returned image has {spec.norm} norm {float(norms[i]):.8g}, "
                                       f"not the eps* {float(claimed[i]):.8g} it reports")
        with torch.no_grad():
            p = f(x_adv.detach()).argmax(1)
        p, rej = confirm(ctx.f32, x_adv, ys, p)
        broken = hit & (p != ys)
        rejected += int((hit & (p == ys)).sum())
        eps_star[sub] = torch.where(broken, norms, torch.full_like(norms, float("inf")))
        adv_pred[sub] = torch.where(broken, p, ys)
        x_final = x0.detach().clone()  # the final input: the adversarial where one was found, else the clean image
        x_final[sub[broken]] = x_adv[broken].detach().to(x_final.dtype)
    else:
        x_final = x0.detach()
    robust = (correct & torch.isinf(eps_star))[None]
    info = {"clean_correct": correct.tolist(), "rejected_hits": [rejected], "eps_star": eps_star.tolist()}
    res = AttackResult(robust=robust, adv_pred=adv_pred[None], zero_grad=zero_grad, info=info, eps_star=eps_star)
    _final_confidence(f, x_final[None], y, res)
    return res


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
