"""Batched building blocks of the corruptions: CPU library paths vs device paths, separable filters as matrices,
resampling, motion blur, plasma fractal. Images are float tensors (B, C, H, W). Per-sample random draws are in
randomness.py, spatter's water mask in water.py."""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from robench.corrupt.randomness import Draws


# ---------------------------------------------------------------- CPU library paths vs device paths

_force_device = False


def cpu_path(x: torch.Tensor) -> bool:
    """True where a corruption runs the reference's own library call (PIL, OpenCV) per image instead of its torch
    code: x is on the CPU and device paths are not forced. The torch code (the device path) runs everywhere else."""
    return x.device.type == "cpu" and not _force_device


@contextlib.contextmanager
def device_paths(on: bool = True):
    """Run the torch (device) code of every corruption on CPU tensors too, e.g. to validate it against the CPU path."""
    global _force_device
    old, _force_device = _force_device, on
    try:
        yield
    finally:
        _force_device = old


_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def cpu_map(fn, *iterables) -> list:
    """map over images in a thread pool sized to torch's intra-op threads (PIL / OpenCV release the GIL)."""
    global _pool, _pool_size
    n = max(1, torch.get_num_threads())
    if n == 1:
        return list(map(fn, *iterables))
    if _pool is None or _pool_size != n:
        _pool, _pool_size = ThreadPoolExecutor(n), n
    return list(_pool.map(fn, *iterables))


def _cv2():
    import cv2

    return cv2


_CV2_BORDER = {"nearest": 1, "reflect": 2, "mirror": 4}  # BORDER_REPLICATE, BORDER_REFLECT, BORDER_REFLECT_101


# ---------------------------------------------------------------- boundary handling and 1-D filters as matrices

def boundary_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map integer indices into [0, n) like scipy.ndimage modes: nearest (clamp), reflect (d c b a | a b c d),
    mirror (d c b | a b c d, = OpenCV BORDER_REFLECT_101 = torch 'reflect')."""
    if mode == "nearest":
        return np.clip(i, 0, n - 1)
    if n == 1:
        return np.zeros_like(i)
    if mode == "reflect":
        m = np.mod(i, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m)
    if mode == "mirror":
        m = np.mod(i, 2 * n - 2)
        return np.where(m < n, m, 2 * n - 2 - m)
    raise ValueError(mode)


@lru_cache(maxsize=256)
def _filter_matrix_np(n: int, weights: tuple, mode: str) -> np.ndarray:
    """(n, n) matrix applying the centred 1-D correlation `weights` along an axis with the given boundary mode."""
    w = np.asarray(weights, dtype=np.float64)
    r = len(w) // 2
    M = np.zeros((n, n))
    rows = np.arange(n)
    for k, wk in enumerate(w):
        np.add.at(M, (rows, boundary_index(rows + k - r, n, mode)), wk)
    return M


def gaussian_weights(sigma: float, truncate: float = 4.0) -> tuple:
    """scipy.ndimage.gaussian_filter1d's kernel (radius int(truncate*sigma + 0.5))."""
    r = int(truncate * float(sigma) + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * x ** 2 / float(sigma) ** 2)
    return tuple(w / w.sum())


def _matrix(n, weights, mode, device, dtype):
    return torch.as_tensor(_filter_matrix_np(n, weights, mode), dtype=dtype, device=device)


def separable(x: torch.Tensor, wh: tuple, ww: tuple, mode: str) -> torch.Tensor:
    """Correlate the last two axes of x with 1-D kernels wh (rows) and ww (columns): two matmuls, exact borders.
    On the CPU, kernels shorter than the image go through cv2.sepFilter2D per plane (same sums, ~5x faster)."""
    H, W = x.shape[-2:]
    if cpu_path(x) and x.dtype in (torch.float32, torch.float64) and max(len(wh), len(ww)) // 2 < min(H, W):
        cv2 = _cv2()
        planes = x.detach().reshape(-1, H, W).contiguous().numpy()
        kh, kw = np.asarray(wh, dtype=planes.dtype), np.asarray(ww, dtype=planes.dtype)

        def one(a):
            return cv2.sepFilter2D(a, -1, kw, kh, borderType=_CV2_BORDER[mode])
        return torch.from_numpy(np.stack(cpu_map(one, planes))).reshape(x.shape)
    Mh = _matrix(H, wh, mode, x.device, x.dtype)
    Mw = _matrix(W, ww, mode, x.device, x.dtype)
    return Mh @ x @ Mw.T


def gaussian_blur(x: torch.Tensor, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian / scipy.ndimage.gaussian_filter over the last two axes (sigma 0 = identity)."""
    if sigma <= 1e-15:
        return x
    w = gaussian_weights(sigma, truncate)
    return separable(x, w, w, mode)


# ---------------------------------------------------------------- resampling

def clipped_zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    """hendrycks' clipped_zoom: crop the centre 1/z of the image, scipy.ndimage.zoom(order=1) it back (bilinear,
    corners aligned), and trim the centre to the input size."""
    H, W = x.shape[-2:]
    ch, cw = math.ceil(H / z), math.ceil(W / z)
    top, left = (H - ch) // 2, (W - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    oh, ow = int(round(ch * z)), int(round(cw * z))
    lead = crop.shape[:-2]
    out = F.interpolate(crop.reshape(-1, 1, ch, cw), size=(oh, ow), mode="bilinear", align_corners=True)
    out = out.reshape(*lead, oh, ow)
    th, tw = (oh - H) // 2, (ow - W) // 2
    return out[..., th:th + H, tw:tw + W]


def pad_index(x: torch.Tensor, r: int, mode: str) -> torch.Tensor:
    """Pad the last two axes of x by r on every side with a boundary_index mode (any r)."""
    H, W = x.shape[-2:]
    rows = torch.as_tensor(boundary_index(np.arange(-r, H + r), H, mode), device=x.device)
    cols = torch.as_tensor(boundary_index(np.arange(-r, W + r), W, mode), device=x.device)
    return x[..., rows, :][..., cols]


def _fft_size(n: int) -> int:
    """Smallest m >= n whose only prime factors are 2, 3 and 5 (fast FFT sizes)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """cv2.filter2D (correlation, BORDER_REFLECT_101) of every channel of x (..., H, W) with a square odd kernel,
    computed with FFTs (exact up to float rounding; large kernels are ~6x faster than conv2d on CPU)."""
    H, W = x.shape[-2:]
    r = kernel.shape[-1] // 2
    xp = pad_index(x, r, "mirror")
    size = (_fft_size(H + 2 * r), _fft_size(W + 2 * r))
    K = torch.fft.rfft2(torch.flip(kernel.to(x.dtype), (0, 1)), s=size)
    y = torch.fft.irfft2(torch.fft.rfft2(xp, s=size) * K, s=size)
    return y[..., 2 * r:2 * r + H, 2 * r:2 * r + W]


@lru_cache(maxsize=64)
def pil_box_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of PIL's Image.resize(..., Image.BOX) along one axis (PIL precompute_coeffs)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    M = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        t = (np.arange(lo, hi) - center + 0.5) / filterscale
        w = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
        M[o, lo:hi] = w / w.sum() if w.sum() else 0
    return M


def pil_box_resize(x: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """PIL BOX resize of (..., H, W) to (h, w): horizontal pass then vertical pass, each stored as uint8 levels
    (as PIL does for RGB images) when quantize."""
    H, W = x.shape[-2:]
    h, w = size
    Mw = torch.as_tensor(pil_box_weights(W, w), dtype=x.dtype, device=x.device)
    Mh = torch.as_tensor(pil_box_weights(H, h), dtype=x.dtype, device=x.device)
    # PIL rounds half up in fixed point (ties are common: e.g. the mean of two pixels)
    q = (lambda t: torch.floor(t * 255 + 0.5 + 1e-4) / 255) if quantize else (lambda t: t)
    return q(Mh @ q(x @ Mw.T))


def pil_box_resize_taps(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pil_box_resize as a few weighted row / column selections (each output pixel averages <= ceil(scale)+1
    inputs): the same sums as the matrix form, cheaper than a dense matmul when downscaling."""
    H, W = x.shape[-2:]
    h, w = size
    q = lambda t: torch.floor(t * 255 + 0.5 + 1e-4) / 255  # noqa: E731
    y = x
    for dim, n_in, n_out in ((-1, W, w), (-2, H, h)):
        idx, wt = _box_taps(n_in, n_out)
        shape = (-1,) if dim == -1 else (-1, 1)
        acc = None
        for k in range(idx.shape[0]):
            t = y.index_select(dim, idx[k].to(x.device)) * wt[k].to(x.device, x.dtype).view(shape)
            acc = t if acc is None else acc.add_(t)
        y = q(acc)
    return y


@lru_cache(maxsize=64)
def _box_taps(n_in: int, n_out: int):
    M = pil_box_weights(n_in, n_out)
    K = int((M > 0).sum(1).max())
    idx, wt = np.zeros((K, n_out), dtype=np.int64), np.zeros((K, n_out))
    for o in range(n_out):
        nz = np.nonzero(M[o])[0]
        idx[:len(nz), o], wt[:len(nz), o] = nz, M[o, nz]
    return torch.as_tensor(idx), torch.as_tensor(wt)


def nearest_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL's NEAREST (= an upscaling BOX) resize of the last two axes: output pixel i takes input floor((i+.5)s)."""
    H, W = x.shape[-2:]
    h, w = size
    rows = torch.as_tensor(np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1), device=x.device)
    cols = torch.as_tensor(np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1), device=x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def to_uint8(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """round(255 x) as uint8, x clipped to [0, 1] (how an image in [0, 1] enters PIL / OpenCV / imagecorruptions).
    inplace: x is already in [0, 1] and may be overwritten (a corruption's own copy): no float temporary."""
    y = x.mul_(255) if inplace else x.clamp(0.0, 1.0).mul_(255)
    return y.round_().to(torch.uint8)


# ---------------------------------------------------------------- motion blur (ImageMagick MotionBlurImage)

def motion_offsets(radius: int, sigma: float, angle_deg: float, H: int, W: int):
    """Kernel weights and integer (dy, dx) taps of ImageMagick's motion blur as ported by imagecorruptions:
    width = 2*radius + 1 Gaussian taps along the direction `angle`, stopping at the image size."""
    width = 2 * int(radius) + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    s, c = math.sin(math.radians(angle_deg)), math.cos(math.radians(angle_deg))
    taps = []
    for i in range(width):
        dy, dx = -math.ceil(i * s - 0.5), -math.ceil(i * c - 0.5)
        if abs(dy) >= H or abs(dx) >= W:
            break
        taps.append((float(k[i]), dy, dx))
    return taps


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angles) -> torch.Tensor:
    """Motion blur of each image x[b] (C, H, W) along angles[b] degrees (a list, or a tensor on x's device): out =
    sum_i k_i x[clamp(y-dy_i), clamp(x-dx_i)] of an edge-replicated pad. On the CPU as slices per image; elsewhere
    as one gather per tap over the whole batch (motion_blur_batched)."""
    if not cpu_path(x):
        return motion_blur_batched(x, radius, sigma, torch.as_tensor(angles, device=x.device))
    if isinstance(angles, torch.Tensor):
        angles = angles.tolist()
    B, C, H, W = x.shape
    P = 2 * int(radius) + 1
    xp = F.pad(x, (P, P, P, P), mode="replicate")
    out = torch.zeros_like(x)
    for b, a in enumerate(angles):
        acc = out[b]
        for k, dy, dx in motion_offsets(radius, sigma, float(a), H, W):
            acc.add_(xp[b, :, P - dy:P - dy + H, P - dx:P - dx + W], alpha=k)
    return out


def motion_blur_batched(x: torch.Tensor, radius: int, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """motion_blur with per-image angles (B,) on x's device: the taps' offsets are computed for the whole batch
    (as motion_offsets does, in float64), then each tap is one gather from the padded batch; no host round trip."""
    B, C, H, W = x.shape
    width = 2 * int(radius) + 1
    P = width
    k = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * float(sigma) ** 2))
    k = (k / k.sum()).to(x.device)
    rad = angles.to(torch.float64) * (math.pi / 180)
    i = torch.arange(width, dtype=torch.float64, device=x.device)
    dy = -torch.ceil(i * torch.sin(rad)[:, None] - 0.5).long()   # (B, width)
    dx = -torch.ceil(i * torch.cos(rad)[:, None] - 0.5).long()
    # motion_offsets stops at the first tap that leaves the image: later taps get weight 0
    out_of_image = (dy.abs() >= H) | (dx.abs() >= W)
    valid = torch.cumsum(out_of_image.long(), dim=1) == 0
    weights = k[None] * valid                                      # (B, width)
    xp = F.pad(x, (P, P, P, P), mode="replicate")
    Wp = W + 2 * P
    base = ((torch.arange(H, device=x.device)[:, None] + P) * Wp + torch.arange(W, device=x.device) + P).reshape(-1)
    flat = xp.reshape(B, C, -1)
    out = torch.zeros(B, C, H * W, dtype=x.dtype, device=x.device)
    shift = (-dy * Wp - dx).clamp(-P * Wp - P, P * Wp + P)          # invalid taps stay inside the pad
    for t in range(width):
        idx = (base[None] + shift[:, t, None]).unsqueeze(1).expand(B, C, -1)
        out.add_(flat.gather(2, idx) * weights[:, t, None, None].to(x.dtype))
    return out.reshape(B, C, H, W)


# ---------------------------------------------------------------- plasma fractal (diamond-square), batched

def plasma_fractal(draws: Draws, mapsize: int, wibbledecay: float, dtype=torch.float32) -> torch.Tensor:
    """hendrycks' plasma_fractal for every sample at once: (B, mapsize, mapsize) in [0, 1]. The uniform draws are
    made in the original's order (squares, then the two diamond sets, per step)."""
    assert mapsize & (mapsize - 1) == 0
    B = len(draws)
    m = torch.zeros(B, mapsize, mapsize, dtype=dtype, device=draws.device)
    step, wibble = mapsize, 100.0

    def wibbled(a):
        return a / 4 + wibble * draws.uniform(-wibble, wibble, tuple(a.shape[1:])).to(dtype)

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + torch.roll(corner, -1, dims=1)
        sq = sq + torch.roll(sq, -1, dims=2)
        m[:, half::step, half::step] = wibbled(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        lt = dr + torch.roll(dr, 1, dims=1) + ul + torch.roll(ul, -1, dims=2)
        m[:, 0::step, half::step] = wibbled(lt)
        tt = dr + torch.roll(dr, 1, dims=2) + ul + torch.roll(ul, -1, dims=1)
        m[:, half::step, 0::step] = wibbled(tt)
        step //= 2
        wibble /= wibbledecay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def next_power_of_2(n: int) -> int:
    return 1 if n == 0 else 2 ** (n - 1).bit_length()


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """OpenCV COLOR_RGB2GRAY weights, (B, 3, H, W) -> (B, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
