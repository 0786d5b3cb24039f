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

from robench.attack.base import (AttackInvariantError, AttackOptions, AttackResult, check_adversarial,  # noqa: F401
                                 clean_pass, get_kind)
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
    params = list(model.named_parameters())
    had_grad = {n for n, p in params if p.grad is not None}
    req = [p.requires_grad for _, p in params]
    n_ell = 0
    if spec.adaptive:
        from robench.zoo.attention import set_elliptical_adaptive  # local: timm's import (~3.6 s), adaptive only

        n_ell = set_elliptical_adaptive(model, True)
        if n_ell == 0:
            raise RobenchError(f"attack {spec.name} is adaptive (grad through elliptical m) but the model has no "
                               "elliptical attention layers")
    for _, p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for (_, p), r in zip(params, req):
            p.requires_grad_(r)
        if n_ell:
            from robench.zoo.attention import set_elliptical_adaptive

            set_elliptical_adaptive(model, False)
    if model.training:
        raise AttackInvariantError(f"attack {spec.name} left the model in training mode")
    left = [n for n, p in params if p.grad is not None and n not in had_grad]
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
    `keep_adv` (FGSM/PGD): info["x_adv"] holds the adversarial images [n_eps, B, C, H, W] (in the attack's space:
    pixels for the standard protocol), x itself for rows that were not attacked.
    `strict`: check every FGSM/PGD iterate in float64 and raise at once (else on the device, raised at the end).
    `compile`: torch.compile the FGSM/PGD update step. `compact_every`: early-exit compaction period (steps).
    """
    if x.ndim != 4 or y.shape != (x.shape[0],) or len(seeds) != x.shape[0]:
        raise RobenchError(f"run_attack: expected x (B,C,H,W), y (B,), B seeds; got {tuple(x.shape)}, "
                           f"{tuple(y.shape)}, {len(seeds)} seeds")
    if spec.protocol == "standard" and (x.min() < 0 or x.max() > 1):
        raise RobenchError("run_attack: images must be in [0, 1] (the model normalises them itself)")
    with attack_mode(model, spec):
        f, x0, clip = _space(model, x, spec)
        f32 = None
        if amp_dtype is not None:
            f, f32 = _Autocast(f, amp_dtype), f
        kind = get_kind(spec.kind)  # keep_adv is ignored by kinds without keeps_adv
        opts = AttackOptions(clip=clip, max_rows=max_rows, clean_pred=clean_pred, keep_adv=keep_adv, f32=f32,
                             strict=strict, compile=compile, compact_every=compact_every)
        res = kind.run(f, x0, y, spec, seeds, opts)
    res.info.update(attack=spec.name, label=spec.label, protocol=spec.protocol, adaptive=spec.adaptive,
                    eps=list(spec.eps), amp=str(amp_dtype).replace("torch.", "") if amp_dtype else None)
    return res
