"""Per-sample random draws: every sample draws from its own generator seeded with its seed (`Draws`), or replays
recorded arrays (`Replay`, the reference's own noise in fidelity tests); Poisson draws of 8-bit images by alias
tables."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from robench.seeding import generator


# ---------------------------------------------------------------- random draws (one generator per sample)

class Draws:
    """Random draws with numpy-like signatures, each sample drawing from its own generator: draw k of sample i
    depends only on seeds[i], never on the batch. Every method returns a tensor (B, *shape)."""

    def __init__(self, seeds, device):
        self.device = torch.device(device)
        self.gens = [generator(s, self.device) for s in seeds]

    def __len__(self):
        return len(self.gens)

    # Each sample's draws fill its slice of one batch tensor in place (the values torch.rand / randn / randint
    # would return for that generator, without stacking copies).
    def _empty(self, shape, dtype=torch.float32):
        shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (int(shape),)
        return torch.empty((len(self.gens), *shape), dtype=dtype, device=self.device)

    def random(self, shape=()) -> torch.Tensor:
        out = self._empty(shape)
        for o, g in zip(out, self.gens):
            o.uniform_(0, 1, generator=g)
        return out

    def uniform(self, low, high, shape=()) -> torch.Tensor:
        return self.random(shape) * (high - low) + low

    def normal(self, loc, scale, shape=()) -> torch.Tensor:
        out = self._empty(shape)
        for o, g in zip(out, self.gens):
            o.normal_(0, 1, generator=g)
        return out.mul_(scale).add_(loc)

    def integers(self, low, high, shape=()) -> torch.Tensor:
        """Integers in [low, high) (numpy randint)."""
        out = self._empty(shape, torch.int64)
        for o, g in zip(out, self.gens):
            o.random_(int(low), int(high), generator=g)
        return out

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.poisson(r, generator=g) for r, g in zip(rates, self.gens)])



class Replay(Draws):
    """Draws that return given arrays in order (to inject a reference implementation's noise in tests)."""

    def __init__(self, arrays, device="cpu"):
        self.device = torch.device(device)
        self.arrays = [torch.as_tensor(np.asarray(a)).to(self.device) for a in arrays]
        self.gens = [None] * (len(self.arrays[0]) if self.arrays else 0)

    def _next(self, shape):
        a = self.arrays.pop(0)
        if shape is not None and tuple(a.shape[1:]) != tuple(shape):
            raise ValueError(f"replayed draw has shape {tuple(a.shape)}, expected (B, {tuple(shape)})")
        return a

    def random(self, shape=()):
        return self._next(shape).float()

    def uniform(self, low, high, shape=()):
        return self._next(shape).float()

    def normal(self, loc, scale, shape=()):
        return self._next(shape).float()

    def integers(self, low, high, shape=()):
        return self._next(shape).long()

    def poisson(self, rates):
        return self._next(rates.shape[1:]).to(rates.dtype)


# ---------------------------------------------------------------- Poisson draws of 8-bit images by alias tables

@lru_cache(maxsize=32)
def poisson_alias_table(c: float, levels: int = 256):
    """Walker/Vose alias tables of Poisson(level / (levels - 1) * c) for every level: (prob (L, K) float64,
    alias (L, K) int64), K covering each distribution up to a tail below 1e-15 (renormalised). Vose's stacks of
    small (< 1) and large scaled probabilities are run for all levels at once (one pairing per level per step)."""
    lam = np.arange(levels) / (levels - 1) * c
    K = int(lam[-1] + 12 * math.sqrt(lam[-1]) + 30)
    k = np.arange(K)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, K)))])
    with np.errstate(divide="ignore", invalid="ignore"):  # level 0: lambda = 0, all mass at k = 0
        pmf = np.exp(k[None] * np.log(lam[:, None]) - lam[:, None] - log_fact[None])
    pmf[0] = k == 0
    q = pmf / pmf.sum(1, keepdims=True) * K
    R = np.arange(levels)
    prob, alias = np.ones((levels, K)), np.tile(np.arange(K), (levels, 1))
    # stacks as arrays with per-row sizes: small holds indices with q < 1, large the others (in index order)
    is_small = q < 1
    small = np.where(is_small, np.arange(K), K + np.arange(K)).argsort(1, kind="stable")
    large = np.where(~is_small, np.arange(K), K + np.arange(K)).argsort(1, kind="stable")
    n_small, n_large = is_small.sum(1), (~is_small).sum(1)
    while True:
        act = (n_small > 0) & (n_large > 0)
        if not act.any():
            break
        r = R[act]
        s_ = small[r, n_small[r] - 1]
        g_ = large[r, n_large[r] - 1]
        n_small[r] -= 1
        n_large[r] -= 1
        prob[r, s_], alias[r, s_] = q[r, s_], g_
        q[r, g_] -= 1 - q[r, s_]
        to_small = q[r, g_] < 1
        rs, rl = r[to_small], r[~to_small]
        small[rs, n_small[rs]] = g_[to_small]
        n_small[rs] += 1
        large[rl, n_large[rl]] = g_[~to_small]
        n_large[rl] += 1
    # what is left has q == 1 up to rounding: prob 1, its own index
    return torch.as_tensor(prob), torch.as_tensor(alias)


def poisson_8bit(x: torch.Tensor, c: float, draws: Draws) -> torch.Tensor:
    """Poisson(x * c) per element when x holds 8-bit levels (level / 255), by the level's alias table: one float32
    uniform u per element picks column k = floor(K u) and keeps k when the rest K u - k is below prob[k], else takes
    alias[k] (24-bit uniforms: the split probabilities are resolved to ~2^-17, a total-variation distance below
    1e-5 from the exact Poisson law). A few elementwise ops instead of a sampling loop per element. Inputs off the
    8-bit grid use torch.poisson."""
    lev = x.mul(255)
    L = lev.round()
    if lev.sub_(L).abs_().max() > 1e-3:
        return draws.poisson(x * c)
    prob, alias = poisson_alias_table(float(c))
    K = prob.shape[1]
    prob = prob.to(x.device, torch.float32).reshape(-1)
    alias = alias.to(x.device, torch.float32).reshape(-1)
    t = draws.random(x.shape[1:]).mul_(K)
    k = t.to(torch.int32).clamp_(max=K - 1)
    frac = t.sub_(k)
    idx = L.to(torch.int32).mul_(K).add_(k).reshape(-1)
    keep = frac.reshape(-1) < prob.index_select(0, idx)
    return torch.where(keep, k.reshape(-1).to(x.dtype), alias.index_select(0, idx).to(x.dtype)).reshape(x.shape)
