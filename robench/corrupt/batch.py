"""Corrupting a batch: `corrupt_batch` (checked inputs, backend "torch" or "reference") and `apply` (the torch
backend without checks). A suite may be given by name, TOML path or as a CorruptionSuite object (the object is used
as it is, never looked up again by its name).

    from robench.corrupt import corrupt_batch
    from robench.seeding import sample_seeds
    xc = corrupt_batch(x, "fog", 3, sample_seeds(0, idx, "fog", 3))   # x (B, 3, H, W) in [0, 1]

Each image's randomness comes only from its own seed, so results do not depend on batch size, order or shard.
"""

from __future__ import annotations

import torch

from robench.corrupt import corruptions  # noqa: F401  (registers the 19 built-ins before any lookup)
from robench.corrupt import registry
from robench.corrupt.randomness import Draws
from robench.corrupt.reference import corrupt_reference
from robench.corrupt.suite import check_corruption, check_severity, get_suite
from robench.errors import RobenchError

BACKENDS = ("torch", "reference")


def corrupt_batch(x: torch.Tensor, corruption: str, severity: int, seeds, *, suite="imagenet-c",
                  backend: str = "torch") -> torch.Tensor:
    """Corrupt a batch x (B, 3, H, W) float in [0, 1] (H, W >= 32) at severity 1..5 with one seed per image.

    A registered corruption fn(x, p, draws, **options) returns the corrupted batch as floats (clipped and truncated
    to 8-bit levels here) or as uint8 levels (taken as they are).

    Returns a tensor of x's shape, device and dtype in [0, 1], quantised to 8-bit levels like the reference
    (np.uint8 truncation). suite selects the severity parameters ("imagenet-c", "cifar10-c" or a TOML path);
    backend "torch" runs batched torch ops on x's device, "reference" runs imagecorruptions-imaug per image on the
    CPU in worker processes (ImageNet-C parameters only).
    """
    check_corruption(corruption)
    severity = check_severity(severity)
    if backend not in BACKENDS:
        raise RobenchError(f"unknown corruption backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise RobenchError(f"corrupt_batch expects a float tensor (B, 3, H, W), got "
                           f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if min(x.shape[-2:]) < 32:
        raise RobenchError(f"images must be at least 32x32 pixels to corrupt, got {x.shape[-2]}x{x.shape[-1]}")
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    if len(seeds) != x.shape[0]:
        raise RobenchError(f"corrupt_batch needs one seed per image: {len(seeds)} seeds for {x.shape[0]} images")
    suite = get_suite(suite)
    if x.shape[0] == 0:
        return x.clone()
    if backend == "reference":
        if not registry.get(corruption).reference:
            raise RobenchError(f"imagecorruptions has no '{corruption}' (a corruption registered outside it): use "
                               "backend 'torch'")

        if suite.params != "imagenet":
            raise RobenchError("the reference backend (imagecorruptions) only has ImageNet-C parameters; "
                               f"suite '{suite.name}' uses {suite.params} parameters: use backend 'torch'")
        shipped = get_suite("imagenet-c")
        if (suite.severity_params(corruption, severity), suite.options(corruption)) != \
                (shipped.severity_params(corruption, severity), shipped.options(corruption)):
            raise RobenchError(f"suite '{suite.name}' changes the parameters of {corruption}; the reference backend "
                               "(imagecorruptions) has the ImageNet-C ones built in: use backend 'torch'")
        return corrupt_reference(x, corruption, severity, seeds)
    return apply(x, corruption, severity, seeds, suite)


def apply(x, corruption, severity, seeds_or_draws, suite="imagenet-c", quantize: bool = True) -> torch.Tensor:
    """The torch backend without input checks; seeds_or_draws may be a Draws (to inject noise in tests)."""
    suite = get_suite(suite)
    p = suite.severity_params(corruption, severity)
    draws = seeds_or_draws if isinstance(seeds_or_draws, Draws) else Draws(seeds_or_draws, x.device)
    dtype = x.dtype
    work = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    with torch.no_grad():
        # the corruption gets a fresh clamped copy (float bounds: torch 2.14's clamp with int bounds is ~15x slower
        # on CPU), so its result never aliases the caller's tensor
        out = registry.get(corruption).fn(work.clamp(0.0, 1.0).contiguous(), p, draws, **suite.options(corruption))
        if out.dtype == torch.uint8:  # an 8-bit result (a PIL / OpenCV path): already on the grid
            return out.to(dtype).div_(255)
        out = out.clamp_(0.0, 1.0)
        if quantize:  # np.uint8(...) truncation of the reference, robust to float rounding just below a level
            out = out.mul_(255).add_(1e-3).floor_().div_(255)
    return out.to(dtype)
