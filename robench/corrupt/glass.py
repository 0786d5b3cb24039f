"""glass_blur's pixel permutation: hendrycks' sequential pixel-"swap" loop as a source index per pixel, exactly
(numba on the CPU) or in torch on any device (row by row, pointer doubling within a row)."""

from __future__ import annotations

import math

import numpy as np
import torch


_glass_perm = None


def glass_permutation(offsets: np.ndarray, H: int, W: int, d: int) -> np.ndarray:
    """Source index (B, H*W) of every pixel after hendrycks' sequential pixel-"swap" loop, computed exactly on
    indices (compiled with numba); offsets (B, iters, nh, nw, 2) hold the (dx, dy) draws in loop order.

    The original's `x[h, w], x[h', w'] = x[h', w'], x[h, w]` acts on numpy views of RGB pixels, so it is not a
    swap: x[h, w] takes x[h', w'] and x[h', w'] keeps its value. We reproduce that."""
    global _glass_perm
    if _glass_perm is None:
        from numba import njit

        # no cache=True: numba would write .nbi/.nbc files into the installed package, and a later reinstall
        # would then find a stray robench/ namespace directory left in site-packages
        @njit
        def perm(offsets, H, W, d):
            B, iters = offsets.shape[0], offsets.shape[1]
            out = np.empty((B, H * W), dtype=np.int64)
            for b in range(B):
                idx = np.arange(H * W)
                for it in range(iters):
                    i = 0
                    for h in range(H - d, d, -1):
                        j = 0
                        for w in range(W - d, d, -1):
                            dx, dy = offsets[b, it, i, j, 0], offsets[b, it, i, j, 1]
                            a, c = h * W + w, (h + dy) * W + (w + dx)
                            idx[a] = idx[c]
                            j += 1
                        i += 1
                out[b] = idx
            return out
        _glass_perm = perm
    return _glass_perm(offsets, H, W, d)


def glass_permutation_torch(offsets: torch.Tensor, H: int, W: int, d: int) -> torch.Tensor:
    """glass_permutation in torch on offsets' device, in the original's order (rows bottom-up, each row right to
    left), one row of every image at a time.

    Within row h, pixel w takes the current value at (h + dy, w + dx): rows below were already rewritten in this
    pass, rows above not yet, which the array being updated row by row gives. The one dependency inside the row is
    a pixel reading a pixel to its right that this row already rewrote (dy = 0, 0 < dx, w + dx <= W - d): it takes
    that pixel's new value. Those links point right only, so every pixel reaches its chain's end by pointer doubling
    (ceil(log2 n) gathers) and takes the value read there."""
    B, iters = offsets.shape[:2]
    dev = offsets.device
    idx = torch.arange(H * W, device=dev).repeat(B, 1)
    ws = torch.arange(W - d, d, -1, device=dev)  # the row's columns in loop order
    n = len(ws)
    if n == 0 or H - 2 * d <= 0:
        return idx
    jj = torch.arange(n, device=dev).expand(B, n)
    rounds = max(1, math.ceil(math.log2(n)))
    for it in range(iters):
        for i, h in enumerate(range(H - d, d, -1)):
            dx, dy = offsets[:, it, i, :, 0], offsets[:, it, i, :, 1]
            val = idx.gather(1, (h + dy) * W + ws + dx)
            link = (dy == 0) & (dx > 0) & (ws + dx <= W - d)
            ptr = torch.where(link, jj - dx, jj)  # column w + dx is loop position j - dx
            for _ in range(rounds):
                ptr = ptr.gather(1, ptr)
            idx[:, h * W + ws] = val.gather(1, ptr)
    return idx
