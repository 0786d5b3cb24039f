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

Invariants (every adversarial batch, not only in tests): ‖x_adv − x‖ ≤ eps + 1e-6 in the attack norm (in the
attacked space), x_adv ∈ [0, 1] (standard protocol), finite values, model in eval mode before and after, no
gradient left on any parameter. A violation raises `AttackInvariantError` (an AssertionError).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from robench.attack.pgd import attack_loss, pgd_rows, unit_noise
from robench.attack.spec import AttackSpec
from robench.errors import RobenchError
from robench.seeding import derive_seed, generator

TOL = 1e-6


class AttackInvariantError(AssertionError):
    """An adversarial batch broke an invariant (perturbation too large, outside [0, 1], training mode, ...)."""


@dataclass
class AttackResult:
    robust: torch.Tensor  # bool [n_eps, B]: still correctly classified after the attack at that eps
    adv_pred: torch.Tensor  # long [n_eps, B]: prediction on the adversarial input (clean prediction if skipped)
    zero_grad: torch.Tensor  # bool [B]: input gradient of the attack loss exactly zero at the clean input
    info: dict = field(default_factory=dict)


def check_adversarial(x_adv: torch.Tensor, x: torch.Tensor, eps, norm: str, clip: bool, what: str = "attack"):
    """Raise AttackInvariantError unless every row of x_adv is finite, within eps of x, and in [0, 1] if clip."""
    if not torch.isfinite(x_adv).all():
        raise AttackInvariantError(f"{what}: adversarial batch has non-finite values")
    d = (x_adv.detach().double() - x.detach().double()).flatten(1)
    n = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    e = eps.double() if torch.is_tensor(eps) else torch.tensor(float(eps), dtype=torch.float64)
    over = n > e.to(n.device) + TOL
    if over.any():
        i = int(over.nonzero()[0])
        ei = float(e.flatten()[i]) if e.numel() > 1 else float(e)
        raise AttackInvariantError(f"{what}: {norm} perturbation {float(n[i]):.8g} exceeds eps {ei:.8g} (+{TOL})")
    if clip and (x_adv.min() < 0 or x_adv.max() > 1):
        raise AttackInvariantError(f"{what}: adversarial batch leaves [0, 1] (min {float(x_adv.min()):.4g}, "
                                   f"max {float(x_adv.max()):.4g})")


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
        from robench.zoo.attention import set_elliptical_adaptive

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


def clean_pass(f, x0, y, loss: str = "ce"):
    """Clean predictions and whether the input gradient of the loss is exactly zero (one fwd+bwd on B samples)."""
    xg = x0.clone().requires_grad_(True)
    logits = f(xg)
    g, = torch.autograd.grad(attack_loss(logits, y, None, loss).sum(), xg)
    return logits.detach().argmax(1), g.flatten(1).abs().amax(1) == 0


def _targets(seeds, labels, logits, mode):
    """Target class per sample: the least likely class, or a random class != label from the sample's seed."""
    if mode == "least-likely":
        return logits.argmin(1)
    n_classes = logits.shape[1]
    off = [int(torch.randint(1, n_classes, (), generator=generator(derive_seed(s, "target")))) for s in seeds]
    return (labels + torch.tensor(off, device=labels.device)) % n_classes


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, seeds, *,
               amp_dtype: torch.dtype | None = None, max_rows: int | None = None,
               clean_pred: torch.Tensor | None = None, keep_adv: bool = False) -> AttackResult:
    """Attack a batch at every eps of `spec`. x: (B,3,H,W) in [0,1]; y: true labels; seeds: one int per sample.

    Random draws for sample i come only from seeds[i] (FGSM/PGD), so a sample's outcome does not depend on the
    batch it is in. AutoAttack and torchattacks draw from one seed derived from all seeds of the batch (their
    random starts are batched), so their results depend on the chunk: keep chunk boundaries fixed.
    `amp_dtype` (bf16/fp16) runs forward passes under autocast; gradients are taken in fp32 w.r.t. the input.
    `max_rows` bounds how many (sample, eps) rows go through the model at once (memory).
    `clean_pred`: the model's clean predictions if the caller has them (FGSM/PGD then skip misclassified samples
    without any forward pass; their zero_grad is reported False).
    `keep_adv` (FGSM/PGD): info["x_adv"] holds the adversarial images [n_eps, B, C, H, W] (in the attack's space:
    pixels for the standard protocol), x itself for rows that were not attacked.
    """
    if x.ndim != 4 or y.shape != (x.shape[0],) or len(seeds) != x.shape[0]:
        raise RobenchError(f"run_attack: expected x (B,C,H,W), y (B,), B seeds; got {tuple(x.shape)}, "
                           f"{tuple(y.shape)}, {len(seeds)} seeds")
    if spec.protocol == "standard" and (x.min() < 0 or x.max() > 1):
        raise RobenchError("run_attack: images must be in [0, 1] (the model normalises them itself)")
    with attack_mode(model, spec):
        f, x0, clip = _space(model, x, spec)
        if amp_dtype is not None:
            f = _Autocast(f, amp_dtype)
        if spec.kind in ("fgsm", "pgd"):
            res = _run_pgd(f, x0, y, spec, seeds, clip, max_rows, clean_pred, keep_adv)
        elif spec.kind == "autoattack":
            from robench.attack.autoattack import run_autoattack

            res = run_autoattack(f, x0, y, spec, seeds, clip)
        elif spec.kind == "torchattacks":
            from robench.attack.torchattacks_backend import run_torchattacks

            res = run_torchattacks(f, x0, y, spec, seeds)
        else:
            raise RobenchError(f"unknown attack kind '{spec.kind}'")
    res.info.update(attack=spec.name, label=spec.label, protocol=spec.protocol, adaptive=spec.adaptive,
                    eps=list(spec.eps), amp=str(amp_dtype).replace("torch.", "") if amp_dtype else None)
    return res


def _run_pgd(f, x0, y, spec: AttackSpec, seeds, clip: bool, max_rows, clean_pred=None, keep_adv=False):
    B, E = x0.shape[0], len(spec.eps)
    dev, dt = x0.device, x0.dtype
    eps_t = torch.tensor(spec.eps, dtype=dt, device=dev)
    alpha_t = torch.tensor([spec.alpha(e) for e in spec.eps], dtype=dt, device=dev)
    paper = spec.protocol == "paper"
    # clean pass: predictions, attack labels/targets, and the loss gradient at x (= the first PGD gradient
    # for every eps when there is no random start, so it is computed once). With `clean_pred` from the caller
    # (standard protocol), samples it already finds misclassified never enter: no forward or backward for them.
    sub = torch.arange(B, device=dev) if clean_pred is None or paper else (clean_pred == y).nonzero().squeeze(1)
    xg = x0[sub].clone().requires_grad_(True)
    pred0 = clean_pred.clone() if len(sub) < B else torch.empty(B, dtype=torch.long, device=dev)
    g_clean = torch.zeros_like(x0)
    targets = None
    if len(sub):
        logits = f(xg)
        pred0[sub] = logits.detach().argmax(1)
        labels_sub = pred0[sub] if paper else y[sub]
        if spec.targeted:
            t_sub = _targets([seeds[i] for i in sub.tolist()], labels_sub, logits.detach(),
                             spec.params.get("target", "random"))
            targets = torch.zeros_like(y)
            targets[sub] = t_sub
        g_clean[sub], = torch.autograd.grad(
            attack_loss(logits, labels_sub, None if targets is None else targets[sub], spec.loss).sum(), xg)
    labels = pred0 if paper else y
    zero_grad = torch.zeros(B, dtype=torch.bool, device=dev)
    zero_grad[sub] = g_clean[sub].flatten(1).abs().amax(1) == 0
    first_grad = None if spec.random_start else g_clean
    alive = (pred0 == y).expand(E, B).clone() if not paper else torch.ones(E, B, dtype=torch.bool, device=dev)
    adv_all = x0.detach().expand(E, *x0.shape).clone() if keep_adv else None  # unattacked rows keep x
    adv_pred = pred0.expand(E, B).clone()
    stats = {"rows_attacked": 0, "row_grad_steps": 0}
    check = lambda xa, xc, e: check_adversarial(xa, xc, e, spec.norm, clip, spec.name)  # noqa: E731
    for r in range(spec.restarts):
        rows = alive.nonzero()  # (k, i) pairs still robust
        if rows.numel() == 0:
            break
        noise = {}
        if spec.random_start:
            for i in rows[:, 1].unique().tolist():
                noise[i] = unit_noise(seeds[i], x0.shape[1:], spec.norm, r, dt, dev)
        chunk = max_rows or rows.shape[0]
        for c in range(0, rows.shape[0], chunk):
            k, i = rows[c:c + chunk, 0], rows[c:c + chunk, 1]
            e, xs = eps_t[k], x0[i]
            start = xs
            if spec.random_start:
                u = torch.stack([noise[j] for j in i.tolist()])
                start = xs + u * e.view(-1, 1, 1, 1)
                if clip:
                    start = start.clamp(0, 1)
                check(start, xs, e)
            broken, pred, x_adv = pgd_rows(
                f, xs, labels[i], targets[i] if targets is not None else None, e, alpha_t[k], start, spec.norm,
                spec.steps, spec.loss, clip=clip, early_exit=not paper,
                first_grad=first_grad[i] if first_grad is not None else None, check=check, stats=stats)
            ok = (pred == y[i]) if paper else ~broken
            alive[k, i] = ok
            adv_pred[k, i] = pred
            if adv_all is not None:
                adv_all[k, i] = x_adv.detach()
            stats["rows_attacked"] += int(k.numel())
    info = {"clean_correct": (pred0 == y).tolist(), **stats}
    if adv_all is not None:
        info["x_adv"] = adv_all
    return AttackResult(robust=alive, adv_pred=adv_pred, zero_grad=zero_grad, info=info)
