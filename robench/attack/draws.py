"""Counter-based random draws in torch ops: batched, on the model's device, one stream per (sample seed, purpose).

A draw is a pure function of (seed, purpose, element index): the 64-bit key of a row is splitmix64(seed, purpose),
and element j of the row is a hash of (key, j) — two multiply-xorshift rounds in int64 (wrapping arithmetic), whose
top 24 bits give a float32 uniform in [0, 1) exactly. The same int64 ops run on CPU and CUDA, so uniform draws
(and the L∞ random starts made from them) are bit-identical on both devices and independent of which other rows
share the batch. Normal draws (L2 starts) use Box-Muller (log/cos/sqrt): identical up to the last ulp across
devices, bit-identical on one device.
"""

from __future__ import annotations

import math

import torch

_G = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
CHUNK = 1 << 22  # elements per hashing chunk (bounds the int64 temporaries)


def _s64(c: int) -> int:
    """A 64-bit constant as a signed int64 (torch multiplies int64 with wrap-around)."""
    return c - (1 << 64) if c >= 1 << 63 else c


G, C1, C2 = _s64(_G), _s64(_C1), _s64(_C2)


def _srl(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def splitmix(z: torch.Tensor) -> torch.Tensor:
    z = z + G
    z = (z ^ _srl(z, 30)) * C1
    z = (z ^ _srl(z, 27)) * C2
    return z ^ _srl(z, 31)


PURPOSES = {"start": 1, "target": 2, "radius": 3, "normal1": 4, "normal2": 5}


def row_keys(seeds, purpose: str, counter: int, device) -> torch.Tensor:
    """int64 [S] keys from per-sample seeds (python ints < 2**63 or an int64 tensor), a purpose and a counter
    (e.g. the restart)."""
    s = seeds.to(device=device, dtype=torch.int64) if torch.is_tensor(seeds) else \
        torch.tensor([int(v) for v in seeds], dtype=torch.int64, device=device)
    c = ((PURPOSES[purpose] << 40) + int(counter) * _G) % (1 << 64)
    return splitmix(splitmix(s) ^ _s64(c))


def uniform(keys: torch.Tensor, n: int) -> torch.Tensor:
    """float32 [S, n] uniforms in [0, 1) (multiples of 2**-24): element j of row r is a hash of (keys[r], j)."""
    out = torch.empty(keys.shape[0], n, dtype=torch.float32, device=keys.device)
    if keys.numel() == 0 or n == 0:
        return out
    rows = max(1, CHUNK // n)
    idx = torch.arange(n, dtype=torch.int64, device=keys.device).mul_(G)
    for a in range(0, keys.shape[0], rows):
        k = keys[a:a + rows, None]
        z = idx.expand(k.shape[0], n) ^ k
        z.mul_(C1)
        z.bitwise_xor_(_srl(z, 32))
        z.mul_(C2)
        z.bitwise_xor_(_srl(z, 29))
        out[a:a + rows] = _srl(z, 40).to(torch.float32).mul_(2.0 ** -24)
    return out


def uniform_start(keys: torch.Tensor, shape, norm: str, dtype) -> torch.Tensor:
    """Random starts for a unit eps ball, one per key: uniform in [-1, 1)^d (L∞) or uniform in the unit L2 ball
    (Gaussian direction, radius u^(1/d)). Returns [S, *shape] in `dtype`."""
    d = math.prod(shape)
    if norm == "Linf":
        u = uniform(keys, d).mul_(2).sub_(1)
        return u.to(dtype).view(-1, *shape)
    u1 = uniform(splitmix(keys ^ PURPOSES["normal1"]), d).double()
    u2 = uniform(splitmix(keys ^ PURPOSES["normal2"]), d).double()
    z = torch.sqrt(-2 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)  # 1 - u1 in (0, 1]
    r = uniform(splitmix(keys ^ PURPOSES["radius"]), 1).double() ** (1.0 / d)
    u = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300) * r
    return u.to(dtype).view(-1, *shape)


def random_offsets(seeds, n_classes: int, device) -> torch.Tensor:
    """One integer in [1, n_classes) per sample seed (random target = label + offset mod n_classes)."""
    u = uniform(row_keys(seeds, "target", 0, device), 1)[:, 0].double()
    return 1 + (u * (n_classes - 1)).long().clamp_(max=n_classes - 2)
