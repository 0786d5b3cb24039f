"""JPEG compression (encode + decode) as batched torch ops on any device: what PIL's `save(..., "JPEG", quality=q)`
then `Image.open` does through libjpeg(-turbo), step by step:

1. RGB -> YCbCr with libjpeg's 16-bit fixed-point coefficients (jccolor.c), 8-bit results;
2. 4:2:0 chroma subsampling (PIL's default at every quality): 2x2 means with libjpeg's alternating 1, 2 rounding
   bias (jcsample.c h2v2_downsample); the image is first extended to a multiple of 16 by edge replication;
3. 8x8 DCT of every block (level-shifted by 128), quantised by the IJG tables (JPEG standard Annex K) scaled to
   quality q as jpeg_set_quality does (baseline: entries clamped to 1..255), rounded half away from zero;
4. dequantised inverse DCT, + 128, rounded and clipped to 0..255;
5. chroma upsampled with libjpeg's "fancy" triangle filter (jdsample.c h2v2_fancy_upsample: 3/4 - 1/4 weights,
   edge samples replicated, rounding biases 8 and 7);
6. YCbCr -> RGB with libjpeg's fixed-point tables (jdcolor.c), clipped to 0..255.

libjpeg computes the DCTs in integer arithmetic (JDCT_ISLOW); this module uses the exact float DCT, so a few
coefficients round the other way. The difference to PIL is measured per quality in docs/corruptions.md and bounded
in tests/test_corrupt_fidelity.py.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

# JPEG standard (ITU T.81) Annex K tables K.1 and K.2, natural (row-major) order
LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
        14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
          47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32

_S = 16  # libjpeg's SCALEBITS
_HALF = 1 << (_S - 1)


def _fix(v: float) -> int:
    return int(v * (1 << _S) + 0.5)


def quant_table(base, quality: int) -> list[int]:
    """jpeg_set_quality(quality, force_baseline=TRUE) applied to one base table."""
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    return [min(max((b * scale + 50) // 100, 1), 255) for b in base]


@lru_cache(maxsize=8)
def _dct_matrix_cpu() -> torch.Tensor:
    """Orthonormal 8-point DCT-II matrix D[u, x] (the JPEG FDCT is D @ block @ D.T)."""
    D = torch.empty(8, 8, dtype=torch.float64)
    for u in range(8):
        c = math.sqrt(1 / 8) if u == 0 else math.sqrt(2 / 8)
        for x in range(8):
            D[u, x] = c * math.cos((2 * x + 1) * u * math.pi / 16)
    return D


def _rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) int32 0..255 -> (B, 3, H, W) int32 Y, Cb, Cr (jccolor.c)."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    off = (128 << _S) + _HALF - 1
    y = (_fix(0.29900) * r + _fix(0.58700) * g + _fix(0.11400) * b + _HALF) >> _S
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + off) >> _S
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + off) >> _S
    return torch.stack([y, cb, cr], dim=1)


def _ycbcr_to_rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """jdcolor.c ycc_rgb_convert with its tables written as arithmetic; int32 in, (B, 3, H, W) 0..255 out."""
    cb, cr = cb - 128, cr - 128
    r = y + ((_fix(1.40200) * cr + _HALF) >> _S)
    g = y + ((-_fix(0.34414) * cb + _HALF - _fix(0.71414) * cr) >> _S)
    b = y + ((_fix(1.77200) * cb + _HALF) >> _S)
    return torch.stack([r, g, b], dim=1).clamp_(0, 255)


def _downsample_h2v2(c: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int32, H and W even -> (B, H/2, W/2): (sum of the 2x2 block + bias) >> 2, bias 1, 2, 1, 2, ..."""
    s = c[:, 0::2, 0::2] + c[:, 0::2, 1::2] + c[:, 1::2, 0::2] + c[:, 1::2, 1::2]
    bias = torch.ones(s.shape[-1], dtype=s.dtype, device=s.device)
    bias[1::2] = 2
    return (s + bias) >> 2


def _upsample_h2v2_fancy(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h, w) int32 (the component's real downsampled size) -> (B, 2h, 2w): libjpeg's triangle filter."""
    up = torch.cat([c[:, :1], c[:, :-1]], dim=1)      # row above (the first row replicated)
    down = torch.cat([c[:, 1:], c[:, -1:]], dim=1)    # row below (the last row replicated)
    rows = torch.stack([3 * c + up, 3 * c + down], dim=2).reshape(c.shape[0], 2 * h, w)  # column sums
    left = torch.cat([rows[..., :1], rows[..., :-1]], dim=-1)
    right = torch.cat([rows[..., 1:], rows[..., -1:]], dim=-1)
    even = (3 * rows + left + 8) >> 4
    odd = (3 * rows + right + 7) >> 4
    # the first and last output columns: (4 * colsum + 8) >> 4 and (4 * colsum + 7) >> 4, which the replicated
    # neighbour above already gives
    return torch.stack([even, odd], dim=-1).reshape(c.shape[0], 2 * h, 2 * w)


def _blocks(c: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B * H/8 * W/8, 64): the 8x8 blocks, each row-major."""
    B, H, W = c.shape
    return c.reshape(B, H // 8, 8, W // 8, 8).transpose(2, 3).reshape(-1, 64)


def _unblocks(b: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
    return b.reshape(B, H // 8, W // 8, 8, 8).transpose(2, 3).reshape(B, H, W)


def _codec(c: torch.Tensor, table: list[int]) -> torch.Tensor:
    """Encode and decode one component (B, H, W) int32 (H, W multiples of 8): DCT, quantise, dequantise, IDCT.
    The 2-D DCT of a block is one product with kron(D, D) (float64: exact to far below a rounding step)."""
    D = _dct_matrix_cpu()
    K = torch.kron(D, D).to(c.device)                     # vec(D @ blk @ D.T) = K @ vec(blk)
    Q = torch.tensor(table, dtype=torch.float64, device=c.device)
    coef = (_blocks(c).to(torch.float64) - 128) @ K.T
    q = torch.sign(coef) * torch.floor(coef.abs() / Q + 0.5)  # round half away from zero, as libjpeg's quantiser
    rec = (q * Q) @ K                                      # K is orthogonal: its inverse is K.T
    return _unblocks(torch.floor(rec + 128.5).clamp_(0, 255).to(torch.int32), *c.shape)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG encode + decode of x (B, 3, H, W) float in [0, 1] (rounded to 8 bits first, as PIL receives it) at
    `quality`; returns uint8 (B, 3, H, W) on x's device."""
    B, _, H, W = x.shape
    rgb = x.clamp(0.0, 1.0).mul(255).round_().to(torch.int32)
    Hp, Wp = -(-H // 16) * 16, -(-W // 16) * 16
    if (Hp, Wp) != (H, W):  # libjpeg extends the image to whole MCUs by replicating the edge
        rgb = F.pad(rgb.float(), (0, Wp - W, 0, Hp - H), mode="replicate").to(torch.int32)
    ycc = _rgb_to_ycbcr(rgb)
    luma, chroma = quant_table(LUMA, quality), quant_table(CHROMA, quality)
    y = _codec(ycc[:, 0], luma)[:, :H, :W]
    h2, w2 = -(-H // 2), -(-W // 2)
    cb = _codec(_downsample_h2v2(ycc[:, 1]), chroma)[:, :h2, :w2]
    cr = _codec(_downsample_h2v2(ycc[:, 2]), chroma)[:, :h2, :w2]
    cb = _upsample_h2v2_fancy(cb, h2, w2)[:, :H, :W]
    cr = _upsample_h2v2_fancy(cr, h2, w2)[:, :H, :W]
    return _ycbcr_to_rgb(y, cb, cr).to(torch.uint8)
