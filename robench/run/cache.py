"""Corrupted images kept for the next model of a plan (they are the same for every model)."""

from __future__ import annotations

import time
from collections import OrderedDict

import torch


class CorruptionCache:
    """LRU of corrupted batches as uint8 on the CPU, within a byte budget (0 disables it). Lossless: the
    corruption engine quantises to 8-bit levels; a batch that is not on the 8-bit grid is not cached.

    Only where it pays: a corruption whose first cached batch took longer to store (quantise, copy to the host)
    than half the time to compute it (a later read costs about as much again) is recomputed from then on, e.g. the
    pointwise corruptions on a GPU. Keys start with the corruption's name (what `recompute` holds)."""

    def __init__(self, budget_mb: int):
        self.budget, self.used, self.items = budget_mb * 2**20, 0, OrderedDict()
        self.recompute: set = set()  # corruption names not worth caching

    def get(self, key, device):
        if key not in self.items:
            return None
        self.items.move_to_end(key)
        return self.items[key].to(device).float().div_(255)

    def put(self, key, x: torch.Tensor, corrupt_s: float | None = None):
        if self.budget <= 0 or x.numel() > self.budget or key[0] in self.recompute:
            return
        t0 = time.perf_counter()
        q = (x * 255).round()
        if not torch.equal(q / 255, x):
            return
        self.items[key] = q.to(torch.uint8).cpu()
        self.used += x.numel()
        if corrupt_s is not None and 2 * (time.perf_counter() - t0) > corrupt_s:
            self.recompute.add(key[0])
            self.used -= self.items.pop(key).numel()
            return
        while self.used > self.budget:
            _, old = self.items.popitem(last=False)
            self.used -= old.numel()
