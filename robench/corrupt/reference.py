"""Reference backend: imagecorruptions-imaug (`imagecorruptions.corrupt`) per image on the CPU, in a process pool.

Images go through uint8 (round(x*255)) as the reference expects, and come back as its uint8 output / 255. Each
image seeds numpy's global generator (and the `seed` argument of glass_blur / impulse_noise) from its own seed.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from robench.corrupt import registry

_pool: ProcessPoolExecutor | None = None
_pool_size = 0

SEEDED = ("glass_blur", "impulse_noise")  # functions taking an explicit seed argument


def corrupt_one(img: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """imagecorruptions on one HxWx3 uint8 image, deterministic in `seed`."""
    import warnings

    from imagecorruptions import corrupt

    np.random.seed(seed % 2 ** 32)
    kwargs = {"seed": seed % 2 ** 32} if corruption in SEEDED else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return corrupt(img, severity=severity, corruption_name=corruption, **kwargs)


def _chunk(args):
    imgs, corruption, severity, seeds = args
    return [corrupt_one(i, corruption, severity, s) for i, s in zip(imgs, seeds)]


def get_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A shared pool of `workers` processes (default: one per CPU core), started once."""
    global _pool, _pool_size
    workers = workers or os.cpu_count() or 1
    if _pool is None or _pool_size != workers:
        if _pool is not None:
            _pool.shutdown()
        import multiprocessing as mp

        _pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        _pool_size = workers
    return _pool


def corrupt_reference(x: torch.Tensor, corruption: str, severity: int, seeds, workers: int | None = None
                      ) -> torch.Tensor:
    """Corrupt x (B, 3, H, W) in [0, 1] with imagecorruptions, split across worker processes."""
    imgs = (x.detach().float().clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    pool = get_pool(workers)
    n = max(1, len(imgs) // (_pool_size * 2) + (len(imgs) % (_pool_size * 2) > 0))
    jobs = [(imgs[i:i + n], corruption, severity, seeds[i:i + n]) for i in range(0, len(imgs), n)]
    out = [o for chunk in pool.map(_chunk, jobs) for o in chunk]
    y = torch.as_tensor(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255
    return y


# ---------------------------------------------------------------- noise injection (fidelity tests, benchmarks)

@contextlib.contextmanager
def record_numpy_draws():
    """Record every np.random.<normal|uniform|poisson|randint> draw made inside the block (list of arrays)."""
    rec, orig = [], {}
    for name in ("normal", "uniform", "poisson", "randint"):
        orig[name] = getattr(np.random, name)

        def wrapped(*a, _f=orig[name], **k):
            r = _f(*a, **k)
            rec.append(np.array(r))
            return r
        setattr(np.random, name, wrapped)
    try:
        yield rec
    finally:
        for name, f in orig.items():
            setattr(np.random, name, f)


# Corruptions whose reference noise can be handed to the torch backend (randomness.Replay) to compare like for like
# (registered with replayable=True next to their functions).
REPLAYABLE = tuple(d.name for d in registry.registered() if d.replayable)


def reference_with_draws(imgs: list[np.ndarray], corruption: str, severity: int, seeds: list[int]):
    """Run the reference in this process on HxWx3 uint8 images and return (outputs, draws): draws is the list of
    per-draw arrays (B, ...) in the torch backend's layout, for randomness.Replay."""
    outs, draws = [], []
    for img, seed in zip(imgs, seeds):
        if corruption in SEEDED:  # not drawn through np.random.<fn> (numba would not compile a patched one)
            outs.append(corrupt_one(img, corruption, severity, seed))
        else:
            with record_numpy_draws() as rec:
                outs.append(corrupt_one(img, corruption, severity, seed))
        seed = seed % 2 ** 32
        if corruption == "impulse_noise":  # skimage s&p: default_rng(seed).random(shape) twice (flipped, salted)
            rng = np.random.default_rng(seed)
            rec = [rng.random(img.shape), rng.random(img.shape)]
        elif corruption == "glass_blur":  # drawn inside numba, whose legacy generator reproduces numpy's;
            # imagecorruptions' glass_blur parameters
            _, d, iters = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
            h, w = img.shape[:2]
            state = np.random.get_state()
            np.random.seed(seed)
            rec = [np.random.randint(-d, d, size=(iters, h - 2 * d, w - 2 * d, 2))]
            np.random.set_state(state)
        draws.append([r.transpose(2, 0, 1) if r.ndim == 3 and r.shape[-1] == 3 else r for r in rec])
    return outs, [np.stack([d[k] for d in draws]) for k in range(len(draws[0]))]
