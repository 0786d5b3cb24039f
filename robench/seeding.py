"""Per-sample seeds: every random draw in robench comes from a seed derived from (global seed, sample index, cell).

A sample's noise therefore never depends on batch size, worker count, device order or sharding.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any mix of ints and strings (stable across processes, platforms and Python versions)."""
    h = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def sample_seeds(seed: int, indices, *cell) -> list[int]:
    """One seed per sample index for the given cell key (e.g. corruption name and severity)."""
    if isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    return [derive_seed(int(seed), int(i), *cell) for i in indices]


def generator(seed: int, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
