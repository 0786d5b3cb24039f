"""spatter's water mask: OpenCV's chain (Canny, distance transform, equalizeHist, emboss, box means) in torch, on
(B, H, W) tensors, exact to OpenCV on uint8."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from robench.corrupt.ops import pad_index


# ---------------------------------------------------------------- spatter's water mask (OpenCV's chain in torch)

def _shifted(x: torch.Tensor, dy: int, dx: int, mode: str, fill=0) -> torch.Tensor:
    """x (B, H, W) shifted so out[i, j] = x[i + dy, j + dx], outside the image by `mode` ("replicate",
    "mirror" = BORDER_REFLECT_101, or "const" with `fill`)."""
    B, H, W = x.shape
    r = max(abs(dy), abs(dx))
    if mode == "const":
        xp = F.pad(x, (r, r, r, r), value=fill)
    else:
        xp = pad_index(x, r, "nearest" if mode == "replicate" else "mirror")
    return xp[:, r + dy:r + dy + H, r + dx:r + dx + W]


def _corr3(x: torch.Tensor, k, mode: str) -> torch.Tensor:
    """3x3 correlation of (B, H, W) with the nested list k."""
    out = None
    for i in range(3):
        for j in range(3):
            if k[i][j]:
                t = _shifted(x, i - 1, j - 1, mode) * k[i][j]
                out = t if out is None else out + t
    return out


def canny(img: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """cv2.Canny(img, low, high) (aperture 3, L1 gradient) of (B, H, W) integer images: bool edge map.

    Sobel with replicated borders; non-maximum suppression with OpenCV's integer direction test (tan 22.5 deg in
    15-bit fixed point) and its tie rules (strictly above the previous neighbour, at least the next one, both
    strictly on diagonals); magnitudes outside the image are 0; hysteresis: candidates (> low) 8-connected to a
    pixel above high, grown until nothing changes."""
    img = img.to(torch.int32)
    gx = _corr3(img, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], "replicate")
    gy = _corr3(img, [[-1, -2, -1], [0, 0, 0], [1, 2, 1]], "replicate")
    mag = gx.abs() + gy.abs()

    def m(dy, dx):
        return _shifted(mag, dy, dx, "const", 0)
    ax, ay = gx.abs().to(torch.int64), gy.abs().to(torch.int64) << 15
    tg22 = ax * int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
    tg67 = tg22 + (ax << 16)
    horiz = ay < tg22
    vert = ~horiz & (ay > tg67)
    s_neg = (gx ^ gy) < 0  # s = -1: neighbours (-1, +1) and (+1, -1); else (-1, -1) and (+1, +1)
    keep_h = (mag > m(0, -1)) & (mag >= m(0, 1))
    keep_v = (mag > m(-1, 0)) & (mag >= m(1, 0))
    keep_d = torch.where(s_neg, (mag > m(-1, 1)) & (mag > m(1, -1)), (mag > m(-1, -1)) & (mag > m(1, 1)))
    cand = (mag > low) & torch.where(horiz, keep_h, torch.where(vert, keep_v, keep_d))
    edges = cand & (mag > high)
    while True:
        grown = cand & (F.max_pool2d(edges[:, None].float(), 3, 1, 1)[:, 0] > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def distance_l2_5(zero: torch.Tensor, cap: float) -> torch.Tensor:
    """cv2.distanceTransform(src, DIST_L2, 5) of (B, H, W), where `zero` marks src's zero pixels, as float32,
    exact up to `cap` (larger distances come out >= cap): OpenCV's 5x5 chamfer weights 1, 1.4, 2.1969 in 16-bit
    fixed point, by parallel relaxation (every hop adds >= 1, so ceil(cap) + 1 rounds settle all distances <= cap;
    OpenCV's two raster passes give the same shortest-path distances); outside the image counts as infinitely far."""
    a, b, c = 65536, round(float(np.float32(1.4)) * 65536), round(float(np.float32(2.1969)) * 65536)
    big = 1 << 40
    D = torch.where(zero, torch.zeros((), dtype=torch.int64, device=zero.device), torch.full((), big, device=zero.device))
    steps = [(dy, dx, w) for dy in range(-2, 3) for dx in range(-2, 3)
             for w in [{1: a, 2: b}.get(dy * dy + dx * dx, c if dy * dy + dx * dx == 5 else 0)] if w]
    for _ in range(int(math.ceil(cap)) + 1):
        best = D
        for dy, dx, w in steps:
            best = torch.minimum(best, _shifted(D, dy, dx, "const", big) + w)
        D = best
    return D.to(torch.float32) * (1.0 / 65536)


def water_mask(liquid: torch.Tensor) -> torch.Tensor:
    """spatter's water mask (imagecorruptions / hendrycks, OpenCV on uint8) of liquid (B, H, W) float64: uint8 cast
    (numpy's: truncation, modulo 256), Canny(50, 150), distanceTransform of the non-edges (L2, 5x5) truncated at 20,
    3x3 box mean -> uint8, equalizeHist, emboss filter2D -> uint8, 3x3 box mean -> uint8; times the liquid; / max."""
    B, H, W = liquid.shape
    lu = torch.remainder(torch.trunc(liquid * 255), 256).to(torch.int32)
    edges = canny(lu, 50, 150)
    dist = distance_l2_5(edges, 20.0).clamp_(max=20.0)
    # cv2.blur on float32: double row / column sums times 1/9, stored as float32; then astype(uint8) truncates
    box = _corr3(dist.double(), [[1] * 3] * 3, "mirror") * (1 / 9)
    d8 = box.to(torch.float32).floor().to(torch.int64)
    # equalizeHist: lut[j] = round(cumulative count above the first used level * 255 / (total - its count))
    hist = torch.zeros(B, 256, dtype=torch.int64, device=liquid.device).scatter_add_(
        1, d8.reshape(B, -1), torch.ones_like(d8.reshape(B, -1)))
    cum = hist.cumsum(1)
    first = (hist > 0).to(torch.int64).argmax(1, keepdim=True)
    n_first = hist.gather(1, first)
    total = H * W
    scale = (torch.tensor(255.0, dtype=torch.float32, device=liquid.device)
             / (total - n_first).clamp(min=1).to(torch.float32))
    lut = torch.round((cum - cum.gather(1, first)).to(torch.float32) * scale).clamp_(0, 255).to(torch.int64)
    lut = torch.where(n_first == total, first.expand(-1, 256), lut)  # a constant image stays that level
    eq = lut.gather(1, d8.reshape(B, -1)).reshape(B, H, W)
    emb = _corr3(eq, [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], "mirror").clamp_(0, 255)
    # cv2.blur on uint8: rounded mean
    dist8 = torch.div(_corr3(emb, [[1] * 3] * 3, "mirror") * 2 + 9, 18, rounding_mode="floor").to(torch.float32)
    mask = lu.to(torch.float32) * dist8
    mx = mask.amax(dim=(1, 2), keepdim=True)
    return torch.where(mx > 0, mask / mx.clamp(min=1e-30), mask)
