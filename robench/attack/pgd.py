"""FGSM / PGD (L∞, L2) in native torch, with a batched eps sweep and exact early exit.

Algorithm (one restart, per row = one (sample, eps) pair), as torchattacks' PGD / PGDL2:

    x⁰ = x                       (no random start)   or  clip(x + δ), δ uniform in the eps ball (per-sample seed)
    xᵗ⁺¹ = clip(x + Π_eps(xᵗ + α·s(∇ₓ L(f(xᵗ), y)) − x))   s = sign (L∞) or g/(‖g‖₂+1e-10) (L2)

Π_eps clamps to [−eps, eps] (L∞) or rescales onto the L2 ball; clip is to [0, 1] (standard protocol only).
The loss is summed over rows, so each row's gradient is independent of the batch.

Success rule: a row counts as broken as soon as ANY iterate x⁰…x^T (the prediction comes for free from the
forward pass that computes the next gradient) is misclassified; a sample is robust at an eps only if it is
correct on the clean input and survives every restart. Early exit is therefore exact: a clean-misclassified
sample never enters, a row leaves the batch at the step where it breaks, later restarts only see survivors —
none of this changes any per-row outcome. What is NOT done: dropping a sample at eps_j because it broke at a
smaller eps_i. PGD at a larger eps takes larger steps along a different trajectory and can fail where the smaller
eps succeeded, so that shortcut would make a row's result depend on which other eps were in the sweep.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from robench.seeding import derive_seed, generator

GRAD_EPS = 1e-10  # as torchattacks PGDL2


def project(delta: torch.Tensor, eps: torch.Tensor | float, norm: str) -> torch.Tensor:
    """Project each row of delta onto the eps ball (eps: scalar or one value per row)."""
    if not torch.is_tensor(eps):
        eps = torch.full((delta.shape[0],), float(eps), dtype=delta.dtype, device=delta.device)
    e = eps.to(delta.dtype).view(-1, *([1] * (delta.ndim - 1)))
    if norm == "Linf":
        return torch.maximum(torch.minimum(delta, e), -e)
    n = delta.flatten(1).norm(dim=1).view_as(e)
    return delta * torch.clamp(e / n, max=1.0)  # n == 0 -> inf -> 1


def step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return grad.sign()
    n = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.ndim - 1)))
    return grad / (n + GRAD_EPS)


def unit_noise(seed: int, shape, norm: str, restart: int, dtype, device) -> torch.Tensor:
    """Random start of one sample for a unit eps ball: uniform in [-1,1]^d (L∞) or uniform in the unit L2 ball."""
    g = generator(derive_seed(seed, "start", restart))
    if norm == "Linf":
        u = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    else:
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        r = torch.rand((), generator=g, dtype=torch.float64) ** (1.0 / z.numel())
        u = z / z.norm() * r
    return u.to(dtype=dtype, device=device)


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Per-row loss to MAXIMISE: CE(y) or DLR (untargeted); −CE(t) or targeted DLR (targeted)."""
    logits = logits.float()
    if loss == "ce":
        return -F.cross_entropy(logits, targets, reduction="none") if targets is not None else \
            F.cross_entropy(logits, labels, reduction="none")
    # DLR (Croce & Hein 2020)
    z, _ = logits.sort(dim=1)
    zy = logits.gather(1, labels[:, None])[:, 0]
    if targets is None:
        top = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
        return -(zy - top) / (z[:, -1] - z[:, -3] + 1e-12)
    zt = logits.gather(1, targets[:, None])[:, 0]
    return -(zy - zt) / (z[:, -1] - 0.5 * (z[:, -3] + z[:, -4]) + 1e-12)


def pgd_rows(f, x0, labels, targets, eps, alpha, start, norm, steps, loss="ce", clip=True, early_exit=True,
             first_grad=None, check=None, amp=None, stats=None):
    """Run PGD on N independent rows (one restart). Returns (broken [N] bool, pred [N] long, x_adv [N,...]).

    eps, alpha: [N] per row. start: first iterate. first_grad: gradient at `start` if already known (then the
    rows are known to be correctly classified at `start`). With early_exit a row stops at the first misclassified
    iterate (pred/x_adv are taken there); without it, pred/x_adv are those of the final iterate.
    `check(x_adv, x0, eps)` validates every iterate; `amp` is a context-manager factory for the forward passes;
    `stats['row_grad_steps']` counts row forward+backward passes.
    """
    N = x0.shape[0]
    view = (-1,) + (1,) * (x0.ndim - 1)
    pred_out = torch.empty(N, dtype=torch.long, device=x0.device)
    broken = torch.zeros(N, dtype=torch.bool, device=x0.device)
    x_out = torch.empty_like(x0)
    idx = torch.arange(N, device=x0.device)
    xc = start.detach()
    for t in range(steps):
        if t == 0 and first_grad is not None:
            g = first_grad
        else:
            xc.requires_grad_(True)
            if stats is not None:
                stats["row_grad_steps"] = stats.get("row_grad_steps", 0) + xc.shape[0]
            with (amp or contextlib.nullcontext)():
                logits = f(xc)
            g, = torch.autograd.grad(attack_loss(logits, labels, targets, loss).sum(), xc)
            xc = xc.detach()
            if early_exit:
                p = logits.detach().argmax(1)
                hit = p != labels
                if hit.any():
                    pred_out[idx[hit]], broken[idx[hit]], x_out[idx[hit]] = p[hit], True, xc[hit]
                    keep = ~hit
                    idx, xc, g, x0, labels, eps, alpha = (a[keep] for a in (idx, xc, g, x0, labels, eps, alpha))
                    targets = targets[keep] if targets is not None else None
                    if idx.numel() == 0:
                        return broken, pred_out, x_out
        xc = x0 + project(xc + alpha.view(view) * step_direction(g, norm) - x0, eps, norm)
        if clip:
            xc = xc.clamp(0.0, 1.0)
        if check is not None:
            check(xc, x0, eps)
    with torch.no_grad(), (amp or contextlib.nullcontext)():
        p = f(xc).argmax(1)
    pred_out[idx], broken[idx], x_out[idx] = p, p != labels, xc
    return broken, pred_out, x_out
