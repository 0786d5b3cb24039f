"""Attention diagnostics of a model on a data spec: clean, under one corruption, or on adversarial images."""

from __future__ import annotations

from robench.attack import get_kind, load_attack_suite, run_attack
from robench.corrupt import corrupt_batch, get_suite
from robench.data.formats import load_clean
from robench.diag.stats import inspect_model
from robench.errors import RobenchError
from robench.seeding import derive_seed, sample_seeds
from robench.zoo.entry import ModelEntry
from robench.zoo.registry import RobenchModel
from robench.zoo.sources import build_model


def inspect(model, checkpoint=None, data: str = "digits", *, limit: int | None = 64,
            batch_size: int = 32, max_tokens: int | None = None, seed: int = 0, device: str = "cpu",
            corruption: str | None = None, severity: int = 3, suite: str = "imagenet-c",
            attack: str | None = None, eps=None, random_init: bool = False):
    """Diagnostics of a model on `limit` samples of a data spec: clean, under one corruption (same per-sample
    seeds as a sweep), or on the adversarial images of an FGSM/PGD suite's attack (`attack="pgd"`, `eps` its
    largest eps by default; standard protocol). `model`: a built RobenchModel, or any --model reference
    (robench.zoo.sources) with an optional checkpoint (or random_init=True: random weights on purpose)."""
    from torch.utils.data import DataLoader

    for name, v in (("--limit", limit), ("--batch-size", batch_size), ("--max-tokens", max_tokens)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise RobenchError(f"{name} must be a whole number >= 1, got {v}")
    if not isinstance(model, RobenchModel):
        ckpt = str(checkpoint) if checkpoint else None
        model = build_model(ModelEntry(model, ckpt, random_init=random_init) if isinstance(model, str)
                            else ModelEntry(type(model).__name__, ckpt, module=model))
    model = model.to(device).eval()
    ds = load_clean(data, model.info, limit=limit, seed=seed)
    if ds.class_mask is not None:
        model = model.restricted(ds.class_mask)
    if corruption is None:
        batches = ((x.to(device), y) for x, y, _ in DataLoader(ds.dataset, batch_size=batch_size))
    else:
        suite = get_suite(suite)  # once: a suite path is not re-read for every batch
        batches = ((corrupt_batch(x.to(device), corruption, severity,
                                  sample_seeds(seed, idx, corruption, severity), suite=suite), y)
                   for x, y, idx in DataLoader(ds.dataset, batch_size=batch_size))
    if attack is not None:
        batches = _adversarial_batches(model, batches, attack, eps, seed)
    return inspect_model(model, batches, max_tokens=max_tokens)


def _adversarial_batches(model, batches, attack: str, eps, seed: int):
    import dataclasses

    import torch

    specs = [s for s in load_attack_suite(attack, eps=eps) if get_kind(s.kind).keeps_adv and s.protocol == "standard"]
    if not specs:
        raise RobenchError(f"inspect under attack needs an FGSM/PGD suite in the standard protocol; '{attack}' has none")
    spec = dataclasses.replace(specs[0], eps=(max(specs[0].eps),))
    start = 0
    for x, y in batches:
        seeds = [derive_seed(seed, start + i, "inspect", spec.name) for i in range(len(y))]
        start += len(y)
        with torch.enable_grad():  # inspect_model consumes the batches under no_grad
            out = run_attack(model, x, y.to(x.device), spec, seeds, keep_adv=True)
        yield out.info["x_adv"][0], y
