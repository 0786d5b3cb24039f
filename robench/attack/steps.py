"""The projected step of PGD-style attacks (robench.attack.pgd, fmn): projection onto the L∞ / L2 ball, the step
direction, the L∞ box ∩ [0, 1], one in-place update of the rows, and its functional form that torch.compile fuses
(it also returns what the invariant check needs).

Shapes: rows (N, C, H, W); eps / alpha one value per row, viewed (N, 1, 1, 1) as e_v / a_v.
"""

from __future__ import annotations

import torch

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


def linf_box(x0, e_v, clip: bool):
    """Per-element bounds of the L∞ ball ∩ [0, 1] (or the ball alone without clipping)."""
    lo, hi = x0 - e_v, x0 + e_v
    if clip:
        lo.clamp_(min=0.0)
        hi.clamp_(max=1.0)
    return lo, hi


def take_step(xc, g, x0, lo, hi, e_v, a_v, norm: str, clip: bool):
    """One PGD update of the rows (xc and g are consumed: updated in place where possible)."""
    if norm == "Linf":
        return xc.addcmul_(a_v, g.sign_()).clamp_(min=lo, max=hi)
    xc = xc + a_v * step_direction(g, norm)
    xc = x0 + project(xc - x0, e_v.flatten(), norm)
    return xc.clamp_(0.0, 1.0) if clip else xc


def _step_measured(xc, g, x0, lo, hi, e_v, a_v, norm: str, clip: bool):
    """take_step written functionally (for torch.compile, which fuses it into one loop) plus what the invariant
    check needs: per-row min/max of the iterate and the norm of its perturbation."""
    if norm == "Linf":
        xn = torch.clamp(xc + a_v * g.sign(), min=lo, max=hi)
    else:
        xn = xc + a_v * g / (g.flatten(1).norm(dim=1).view_as(a_v) + GRAD_EPS)
        d = xn - x0
        xn = x0 + d * torch.clamp(e_v / d.flatten(1).norm(dim=1).view_as(e_v), max=1.0)
        if clip:
            xn = xn.clamp(0.0, 1.0)
    f = xn.flatten(1)
    d = f - x0.flatten(1)
    n = d.abs().amax(1) if norm == "Linf" else torch.linalg.vector_norm(d, dim=1)
    return xn, f.amin(1), f.amax(1), n


_COMPILED = {}


def compiled_step(device_type: str, fixed_shapes: bool):
    """torch.compile of the measured step (dynamic shapes; on CUDA with fixed shapes: CUDA graphs as well)."""
    key = (device_type, fixed_shapes)
    if key not in _COMPILED:
        mode = "reduce-overhead" if device_type == "cuda" and fixed_shapes else None
        _COMPILED[key] = torch.compile(_step_measured, dynamic=not fixed_shapes, mode=mode)
    return _COMPILED[key]
