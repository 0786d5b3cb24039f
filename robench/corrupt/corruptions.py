"""The 19 corruptions of ImageNet-C / CIFAR-10-C as batched torch ops, following hendrycks/robustness
(make_imagenet_c.py, make_cifar_c.py). Each function takes x (B, 3, H, W) float in [0, 1], the severity parameter
`p` as written in the suite file, the per-sample random `draws` (randomness.Draws) and the corruption's extra suite
options, and returns the corrupted batch (unclipped values are clipped by the caller), or its uint8 levels. x is the
caller's fresh copy, which a function may overwrite.

On the CPU, pixelate, jpeg_compression, defocus_blur and the Gaussian filters call the reference's own library
(PIL, OpenCV) per image; on other devices (or inside ops.device_paths()) they run as torch code. See docs/corruptions.md."""

from __future__ import annotations

import importlib.resources
import io

import numpy as np
import torch
import torch.nn.functional as F

from robench.corrupt import ops
from robench.corrupt.glass import glass_permutation, glass_permutation_torch
from robench.corrupt.randomness import Replay, poisson_8bit
from robench.corrupt.registry import corruption
from robench.corrupt.water import water_mask


def _builtin(family: str, order: int, replayable: bool = False, validated: str = "imagenet", extra: bool = False):
    """Register one of the 19 corruptions of ImageNet-C / CIFAR-10-C (all present in imagecorruptions); extra: one
    of the 4 outside the 15-corruption benchmark set."""
    return corruption(family=family, order=order, reference=True, replayable=replayable, _builtin=True,
                      validated="imagecorruptions" if validated == "imagenet" else validated, extra=extra)


# ---------------------------------------------------------------- noise

@_builtin("noise", 0, replayable=True)
def gaussian_noise(x, p, draws, **_):
    return x + draws.normal(0.0, p, x.shape[1:])


@_builtin("noise", 1, replayable=True)
def shot_noise(x, p, draws, **_):
    if isinstance(draws, Replay):  # the reference's own Poisson draws
        return draws.poisson(x * p) / p
    return poisson_8bit(x, float(p), draws) / p


@_builtin("noise", 2, replayable=True)
def impulse_noise(x, p, draws, **_):
    # skimage.util.random_noise(mode="s&p", amount=p, salt_vs_pepper=0.5): a pixel is flipped with probability p,
    # to salt or pepper with probability 1/2 each. skimage draws two uniforms per pixel (flipped, then salted), which
    # is how the reference's noise is replayed; robench's own draws use one: u <= p/2 salt, p/2 < u <= p pepper
    # (the same law at half the random numbers)
    if isinstance(draws, Replay):
        flipped = draws.random(x.shape[1:]) <= p
        salted = draws.random(x.shape[1:]) <= 0.5
        return torch.where(flipped, salted.to(x.dtype), x)
    u = draws.random(x.shape[1:])
    return torch.where(u <= p, (u <= p / 2).to(x.dtype), x)


@_builtin("noise", 15, replayable=True, extra=True)
def speckle_noise(x, p, draws, **_):
    return x + x * draws.normal(0.0, p, x.shape[1:])


# ---------------------------------------------------------------- blur

@_builtin("blur", 16, extra=True)
def gaussian_blur(x, p, draws, **_):
    return ops.gaussian_blur(x, p)


_disk_cache: dict = {}


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """hendrycks' disk(): an aliased disk (17x17 up to radius 8) smoothed by cv2.GaussianBlur (3x3, or 5x5 above
    radius 8; BORDER_REFLECT_101)."""
    key = (radius, alias_blur)
    if key not in _disk_cache:
        L = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
        ksize = 3 if radius <= 8 else 5
        X, Y = np.meshgrid(L, L)
        d = ((X ** 2 + Y ** 2) <= radius ** 2).astype(np.float64)
        d /= d.sum()
        g = np.exp(-(np.arange(ksize) - (ksize - 1) / 2) ** 2 / (2 * alias_blur ** 2))
        g = tuple(g / g.sum())
        _disk_cache[key] = ops.separable(torch.as_tensor(d), g, g, "mirror").numpy()
    return _disk_cache[key]


@_builtin("blur", 3)
def defocus_blur(x, p, draws, **_):
    k = disk_kernel(p[0], p[1])
    if ops.cpu_path(x) and x.dtype in (torch.float32, torch.float64):  # cv2.filter2D, the reference's own call
        cv2 = ops._cv2()
        imgs = x.permute(0, 2, 3, 1).contiguous().numpy()
        k = k.astype(imgs.dtype)
        out = ops.cpu_map(lambda a: cv2.filter2D(a, -1, k, borderType=cv2.BORDER_REFLECT_101), imgs)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return ops.filter2d(x, torch.as_tensor(k, device=x.device))


@_builtin("blur", 4, replayable=True)
def glass_blur(x, p, draws, **_):
    sigma, d, iters = float(p[0]), int(p[1]), int(p[2])
    B, C, H, W = x.shape
    x = torch.floor(ops.gaussian_blur(x, sigma) * 255 + 1e-4) / 255  # np.uint8(...) truncation
    nh, nw = max(H - 2 * d, 0), max(W - 2 * d, 0)
    offsets = draws.integers(-d, d, (iters, nh, nw, 2))
    if ops.cpu_path(x):
        perm = torch.as_tensor(glass_permutation(offsets.numpy(), H, W, d))
    else:
        perm = glass_permutation_torch(offsets.to(x.device), H, W, d)
    x = x.reshape(B, C, H * W).gather(2, perm[:, None].expand(B, C, -1)).reshape(B, C, H, W)
    return ops.gaussian_blur(x, sigma)


@_builtin("blur", 5, replayable=True)
def motion_blur(x, p, draws, **_):
    angles = draws.uniform(-45, 45)
    return ops.motion_blur(x * 255, p[0], p[1], angles) / 255


def zoom_factors(p) -> np.ndarray:
    return np.arange(p[0], p[1], p[2])


@_builtin("blur", 6)
def zoom_blur(x, p, draws, **_):
    zs = zoom_factors(p)
    out = x.clone()
    for z in zs:
        out += ops.clipped_zoom(x, float(z))
    return out / (len(zs) + 1)


# ---------------------------------------------------------------- weather

@_builtin("weather", 7, replayable=True)
def snow(x, p, draws, **_):
    loc, scale, zoom, thr, radius, sigma, blend = p
    B, C, H, W = x.shape
    layer = draws.normal(loc, scale, (H, W)).to(x.dtype)
    layer = ops.clipped_zoom(layer, float(zoom))
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer).clamp(0.0, 1.0)
    layer = torch.floor(layer * 255)  # PIL 'L' image (astype uint8 truncation) fed to ImageMagick
    angles = draws.uniform(-135, -45)
    layer = ops.motion_blur(layer[:, None], int(radius), float(sigma), angles)
    layer = torch.round(layer) / 255  # ImageMagick writes 8-bit PNG
    gray = ops.rgb_to_gray(x)
    x = blend * x + (1 - blend) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


_textures: dict = {}


def frost_textures(scale: float, device) -> list[torch.Tensor]:
    """frost1..frost5 (the original draws np.random.randint(5), so frost6 is never used) from the installed
    imagecorruptions package, RGB float in [0, 255], resized by `scale` (cv2 INTER_LINEAR) when scale != 1."""
    key = (scale, str(device))
    if key not in _textures:
        from PIL import Image

        folder = importlib.resources.files("imagecorruptions") / "frost"
        out = []
        for name in ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"]:
            with importlib.resources.as_file(folder / name) as path:
                t = torch.as_tensor(np.array(Image.open(path).convert("RGB")), dtype=torch.float32)
            t = t.permute(2, 0, 1)
            if scale != 1:
                t = F.interpolate(t[None], scale_factor=scale, mode="bilinear", align_corners=False,
                                  recompute_scale_factor=False)[0]
            out.append(t.to(device))
        _textures[key] = out
    return _textures[key]


@_builtin("weather", 8, validated="hendrycks")
def frost(x, p, draws, texture_scale=1.0, **_):
    B, C, H, W = x.shape
    textures = frost_textures(float(texture_scale), x.device)
    which = draws.integers(0, len(textures)).tolist()
    u = draws.random((2,)).cpu().numpy()
    layers = []
    for b in range(B):
        t = textures[which[b]]
        th, tw = t.shape[-2:]
        if th < H or tw < W:  # image larger than the texture: enlarge it (bicubic) just enough to cover
            s = max(H / th, W / tw)
            t = F.interpolate(t[None], size=(int(np.ceil(th * s)), int(np.ceil(tw * s))), mode="bicubic",
                              align_corners=False)[0]
            th, tw = t.shape[-2:]
        y0, x0 = int(u[b, 0] * max(th - H, 1)), int(u[b, 1] * max(tw - W, 1))
        layers.append(t[:, y0:y0 + H, x0:x0 + W])
    frost = torch.stack(layers).to(x.dtype) / 255
    return p[0] * x + p[1] * frost


@_builtin("weather", 9, replayable=True)
def fog(x, p, draws, **_):
    B, C, H, W = x.shape
    mapsize = ops.next_power_of_2(max(H, W))
    plasma = ops.plasma_fractal(draws, mapsize, float(p[1]), dtype=x.dtype)[:, None, :H, :W]
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + p[0] * plasma) * max_val / (max_val + p[0])


@_builtin("weather", 10)
def brightness(x, p, draws, **_):
    # skimage rgb2hsv, V += p (clipped), hsv2rgb == scale every channel by V'/V (V = 0: grey V')
    v = x.amax(dim=1, keepdim=True)
    v2 = (v + p).clamp(max=1)
    return torch.where(v > 0, x * (v2 / v.clamp(min=1e-12)), v2.expand_as(x))


@_builtin("digital", 18, extra=True)
def saturate(x, p, draws, **_):
    # skimage rgb2hsv, S = clip(S*a + b), hsv2rgb, in closed form: out_i = V (1 - S' (V - x_i) / (V - min));
    # grey pixels have hue 0 (red) in skimage, so they become (V, V(1-S'), V(1-S')).
    a, b = p
    v = x.amax(dim=1, keepdim=True)
    delta = v - x.amin(dim=1, keepdim=True)
    s = torch.where(delta > 0, delta / v.clamp(min=1e-12), torch.zeros_like(v))
    s2 = (s * a + b).clamp(0.0, 1.0)
    colour = v * (1 - s2 * (v - x) / delta.clamp(min=1e-12))
    grey = torch.cat([v, v * (1 - s2), v * (1 - s2)], dim=1)
    return torch.where(delta > 0, colour, grey)


@_builtin("weather", 17, replayable=True, extra=True)
def spatter(x, p, draws, **_):
    loc, scale, sigma, thr, intensity, mud = p
    B, C, H, W = x.shape
    liquid = ops.gaussian_blur(draws.normal(loc, scale, (H, W)).double(), float(sigma))
    liquid = torch.where(liquid < thr, torch.zeros_like(liquid), liquid)
    if mud:
        m = (liquid > thr).to(x.dtype)
        m = ops.gaussian_blur(m, float(intensity))
        m = torch.where(m < 0.8, torch.zeros_like(m), m)[:, None]
        colour = torch.tensor([63, 42, 20], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
        return x * (1 - m) + colour * m
    # water: Canny edges -> distance transform -> equalised, embossed highlight: OpenCV per image on the CPU,
    # the same chain in torch elsewhere (water.water_mask)
    if ops.cpu_path(x):
        m = torch.stack([torch.as_tensor(_water_mask(l)) for l in liquid.numpy()]).to(x.dtype)
    else:
        m = water_mask(liquid).to(x.dtype)
    m = m[:, None] * intensity
    colour = torch.tensor([175, 238, 238], dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
    return x + m * colour


def _water_mask(liquid: np.ndarray) -> np.ndarray:
    import cv2

    liquid = (liquid * 255).astype(np.uint8)
    dist = 255 - cv2.Canny(liquid, 50, 150)
    dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
    _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
    dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
    dist = cv2.equalizeHist(dist)
    ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = cv2.filter2D(dist, cv2.CV_8U, ker)
    dist = cv2.blur(dist, (3, 3)).astype(np.float32)
    m = liquid * dist
    return m / m.max() if m.max() > 0 else m


# ---------------------------------------------------------------- digital

@_builtin("digital", 11)
def contrast(x, p, draws, **_):
    means = x.mean(dim=(2, 3), keepdim=True)
    return (x - means) * p + means


@_builtin("digital", 13)
def pixelate(x, p, draws, **_):
    # the original: PIL resize(BOX) down to p * size, then resize(BOX) back (an upscaling BOX filter picks the one
    # source pixel under each output pixel: PIL's NEAREST, which imagecorruptions uses)
    H, W = x.shape[-2:]
    h, w = int(H * p), int(W * p)
    if ops.cpu_path(x):
        from PIL import Image

        imgs = ops.to_uint8(x, inplace=True).permute(0, 2, 3, 1).contiguous().numpy()
        out = ops.cpu_map(lambda a: np.asarray(Image.fromarray(a).resize((w, h), Image.BOX)
                                               .resize((W, H), Image.NEAREST)), imgs)
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    small = ops.pil_box_resize_taps(x, (h, w))
    return ops.nearest_resize(small, (H, W))


def _jpeg_one(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


@_builtin("digital", 14)
def jpeg_compression(x, p, draws, **_):
    if ops.cpu_path(x):  # PIL / libjpeg encode + decode (exactly the original), threads (libjpeg releases the GIL)
        imgs = ops.to_uint8(x, inplace=True).permute(0, 2, 3, 1).numpy()
        out = ops.cpu_map(_jpeg_one, imgs, [int(p)] * len(imgs))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    from robench.corrupt.jpeg import jpeg

    return jpeg(x, int(p))  # libjpeg's pipeline in torch on x's device (robench/corrupt/jpeg.py)


def affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """cv2.getAffineTransform: the 2x3 matrix taking the 3 src points to the 3 dst points."""
    A = np.concatenate([src, np.ones((3, 1))], axis=1)
    return np.linalg.solve(A, dst).T


@_builtin("digital", 12, validated="hendrycks")
def elastic_transform(x, p, draws, **_):
    # hendrycks' original: random affine (cv2.warpAffine, BORDER_REFLECT_101) then a smoothed random displacement
    # field (skimage gaussian mode=reflect truncate=3) applied with map_coordinates(order=1, mode=reflect).
    alpha, sigma, jitter = (float(v) for v in p)
    B, C, H, W = x.shape
    centre = np.float32([H, W]) // 2
    sq = min(H, W) // 3
    pts1 = np.float32([centre + sq, [centre[0] + sq, centre[1] - sq], centre - sq])
    shift = draws.uniform(-jitter, jitter, (3, 2)).cpu().double().numpy()
    dxy = torch.stack([draws.uniform(-1.0, 1.0, (H, W)) for _ in range(2)], dim=1).to(x.dtype)  # (B, 2, H, W)
    yy, xx = torch.meshgrid(torch.arange(H, device=x.device, dtype=x.dtype),
                            torch.arange(W, device=x.device, dtype=x.dtype), indexing="ij")
    # the inverse affine maps each output pixel (x, y) to its source (x', y'); folded with grid_sample's
    # normalisation for the mirror border (align_corners=True: g = 2 s / (N - 1) - 1) into one affine map per image
    theta = np.empty((B, 2, 3))
    for b in range(B):
        M = affine_from_points(pts1.astype(np.float64), (pts1 + shift[b].astype(np.float32)).astype(np.float64))
        theta[b] = np.linalg.inv(np.vstack([M, [0, 0, 1]]))[:2]
    theta[:, 0] *= 2 / max(W - 1, 1)
    theta[:, 1] *= 2 / max(H - 1, 1)
    theta[:, :, 2] -= 1
    th = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
    grid = torch.empty(B, H, W, 2, dtype=x.dtype, device=x.device)
    for k in range(2):
        grid[..., k] = th[:, k, 0, None, None] * xx + th[:, k, 1, None, None] * yy + th[:, k, 2, None, None]
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    # displacement field, sampled with the reflect border (align_corners=False: g = (2 s + 1) / N - 1)
    d = ops.gaussian_blur(dxy, sigma, mode="reflect", truncate=3)
    grid[..., 0] = (xx + alpha * d[:, 0]).mul_(2 / W).add_(1 / W - 1)
    grid[..., 1] = (yy + alpha * d[:, 1]).mul_(2 / H).add_(1 / H - 1)
    return F.grid_sample(warped, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
