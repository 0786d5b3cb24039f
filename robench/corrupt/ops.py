"""Batched building blocks of the corruptions: per-sample random draws, separable filters as matrices, resampling,
motion blur, plasma fractal. Images are float tensors (B, C, H, W)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

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

    def random(self, shape=()) -> torch.Tensor:
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self.gens])

    def uniform(self, low, high, shape=()) -> torch.Tensor:
        return self.random(shape) * (high - low) + low

    def normal(self, loc, scale, shape=()) -> torch.Tensor:
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.gens]) * scale + loc

    def integers(self, low, high, shape=()) -> torch.Tensor:
        """Integers in [low, high) (numpy randint)."""
        return torch.stack([torch.randint(int(low), int(high), shape, generator=g, device=self.device)
                            for g in self.gens])

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
    """Correlate the last two axes of x with 1-D kernels wh (rows) and ww (columns): two matmuls, exact borders."""
    H, W = x.shape[-2:]
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


def sample_bilinear(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, mode: str) -> torch.Tensor:
    """Bilinear sampling of x (B, C, H, W) at pixel coordinates ys, xs (B, H', W') beyond whose borders the image
    is extended with `mode`: "reflect" (= scipy map_coordinates(order=1, mode="reflect")) or "mirror" (= OpenCV
    BORDER_REFLECT_101). Linear interpolation of a symmetrically extended image equals interpolation at the
    reflected coordinate, which is what grid_sample's reflection padding computes."""
    H, W = x.shape[-2:]
    if mode == "reflect":  # reflect about -0.5 and N - 0.5: align_corners=False
        gx, gy = (2 * xs + 1) / W - 1, (2 * ys + 1) / H - 1
    elif mode == "mirror":  # reflect about 0 and N - 1: align_corners=True
        gx, gy = 2 * xs / max(W - 1, 1) - 1, 2 * ys / max(H - 1, 1) - 1
    else:
        raise ValueError(mode)
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=(mode == "mirror"))


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
    """Motion blur of each image x[b] (C, H, W) along angles[b] degrees: out = sum_i k_i x[clamp(y-dy_i),
    clamp(x-dx_i)] via slices of an edge-replicated pad."""
    B, C, H, W = x.shape
    P = 2 * int(radius) + 1
    xp = F.pad(x, (P, P, P, P), mode="replicate")
    out = torch.zeros_like(x)
    for b, a in enumerate(angles):
        acc = out[b]
        for k, dy, dx in motion_offsets(radius, sigma, float(a), H, W):
            acc.add_(xp[b, :, P - dy:P - dy + H, P - dx:P - dx + W], alpha=k)
    return out


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
