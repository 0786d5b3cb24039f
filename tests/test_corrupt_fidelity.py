"""Fidelity of the torch corruptions against imagecorruptions-imaug (the reference) and against hendrycks'
original definitions, on real photos (scikit-image samples resized to 224, ../shared ImageNet samples when present).

- deterministic corruptions: mean |torch - reference| <= 1/255 at every severity;
- stochastic ones with the reference's own noise injected (its numpy draws recorded, or regenerated from its seed,
  and replayed through randomness.Replay): the same bound;
- where imagecorruptions departs from the original (frost, elastic_transform, pixelate upsampling), an oracle of the
  original definition written here with numpy / OpenCV / scipy / PIL, with the same noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("imagecorruptions")
skdata = pytest.importorskip("skimage.data")
from PIL import Image  # noqa: E402

from robench.corrupt import apply  # noqa: E402
from robench.corrupt.randomness import Replay  # noqa: E402
from robench.corrupt.reference import REPLAYABLE, corrupt_one, reference_with_draws  # noqa: E402

SEVERITIES = (1, 2, 3, 4, 5)
TOL = 1.0  # mean absolute difference, in 1/255 units
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample" / "val"


def _photos(size: int) -> list[np.ndarray]:
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        a = getattr(skdata, name)()
        out.append(np.asarray(Image.fromarray(a).convert("RGB").resize((size, size), Image.BILINEAR)))
    if SHARED.is_dir():  # two real ImageNet photos when the shared sample is there
        for p in sorted(SHARED.glob("*/*.JPEG"))[:2]:
            out.append(np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)))
    return out


PHOTOS = _photos(224)
SMALL = _photos(112)  # for the corruptions whose reference is slow (zoom, glass, elastic): same algorithm


def _tensor(imgs) -> torch.Tensor:
    return torch.as_tensor(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def _reference(imgs, corruption, severity) -> torch.Tensor:
    return _tensor([corrupt_one(im, corruption, severity, i) for i, im in enumerate(imgs)])


def _mad(a, b) -> float:
    return (a - b).abs().mean().item() * 255


@pytest.mark.parametrize("corruption", ["defocus_blur", "zoom_blur", "gaussian_blur", "contrast", "brightness",
                                        "saturate", "jpeg_compression", "pixelate"])
def test_deterministic_match_reference(corruption):
    imgs = (SMALL if corruption in ("zoom_blur", "defocus_blur") else PHOTOS)[:2] + PHOTOS[4:5]
    imgs = [im for im in imgs if im.shape == imgs[0].shape]
    x = _tensor(imgs)
    for s in SEVERITIES:
        d = _mad(apply(x, corruption, s, [0] * len(imgs)), _reference(imgs, corruption, s))
        assert d <= TOL, f"{corruption} severity {s}: mean |torch - reference| = {d:.3f}/255"


@pytest.mark.parametrize("corruption", REPLAYABLE)
def test_stochastic_match_reference_with_same_noise(corruption):
    # glass blur's reference is slow (numba compile + per-pixel loop): half-size photos, same algorithm
    imgs = (SMALL if corruption == "glass_blur" else PHOTOS)[:2]
    for s in SEVERITIES:
        outs, draws = reference_with_draws(imgs, corruption, s, [3, 4])
        d = _mad(apply(_tensor(imgs), corruption, s, Replay(draws)), _tensor(outs))
        assert d <= TOL, f"{corruption} severity {s}: mean |torch - reference| = {d:.3f}/255 with the same noise"


def test_pixelate_matches_original_pil_box_box():
    # hendrycks: x.resize(c*size, BOX).resize(size, BOX) (imagecorruptions upsamples with NEAREST instead)
    from robench.corrupt import get_suite

    imgs = PHOTOS[:3]
    for s in SEVERITIES:
        c = get_suite("imagenet-c").severity_params("pixelate", s)
        ref = []
        for im in imgs:
            pil = Image.fromarray(im)
            ref.append(np.asarray(pil.resize((int(224 * c), int(224 * c)), Image.BOX).resize((224, 224), Image.BOX)))
        d = _mad(apply(_tensor(imgs), "pixelate", s, [0] * 3), _tensor(ref))
        assert d <= 0.05, f"pixelate severity {s}: {d:.3f}/255 from PIL BOX/BOX"


def _frost_texture(i: int) -> np.ndarray:
    import importlib.resources

    name = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg"][i]
    with importlib.resources.as_file(importlib.resources.files("imagecorruptions") / "frost" / name) as p:
        return np.asarray(Image.open(p).convert("RGB")).astype(np.float64)


def test_frost_matches_original_definition():
    # original: texture idx ~ randint(5) used at native size, random 224 crop, clip(c0*x + c1*frost, 0, 255)
    from robench.corrupt import get_suite

    imgs = PHOTOS[:3]
    which = np.array([0, 3, 4])
    u = np.array([[0.1, 0.9], [0.5, 0.5], [0.99, 0.01]])
    for s in (1, 3, 5):
        c0, c1 = get_suite("imagenet-c").severity_params("frost", s)
        ref = []
        for im, k, (uy, ux) in zip(imgs, which, u):
            t = _frost_texture(k)
            y0, x0 = int(uy * (t.shape[0] - 224)), int(ux * (t.shape[1] - 224))
            ref.append(np.uint8(np.clip(c0 * im + c1 * t[y0:y0 + 224, x0:x0 + 224], 0, 255)))
        y = apply(_tensor(imgs), "frost", s, Replay([which, u]))
        d = _mad(y, _tensor(ref))
        assert d <= TOL, f"frost severity {s}: {d:.3f}/255 from the original definition"


def _elastic_original(image: np.ndarray, c, shift, ux, uy) -> np.ndarray:
    """hendrycks' make_imagenet_c.py elastic_transform with its random draws given."""
    import cv2
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    image = image.astype(np.float32) / 255.0
    shape = image.shape
    center = np.float32(shape[:2]) // 2
    sq = min(shape[:2]) // 3
    pts1 = np.float32([center + sq, [center[0] + sq, center[1] - sq], center - sq])
    pts2 = pts1 + shift.astype(np.float32)
    M = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, M, shape[:2][::-1], borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian(ux, c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)[..., None]
    dy = (gaussian(uy, c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)[..., None]
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    idx = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    out = map_coordinates(image, idx, order=1, mode="reflect").reshape(shape)
    return np.uint8(np.clip(out, 0, 1) * 255)


def test_elastic_transform_matches_original_definition():
    from robench.corrupt import get_suite

    imgs, n = SMALL[:2], 112
    rng = np.random.default_rng(0)
    for s in SEVERITIES:
        c = get_suite("imagenet-c").severity_params("elastic_transform", s)
        shift = rng.uniform(-c[2], c[2], (2, 3, 2))
        ux, uy = rng.uniform(-1, 1, (2, n, n)), rng.uniform(-1, 1, (2, n, n))
        ref = [_elastic_original(im, c, shift[i], ux[i], uy[i]) for i, im in enumerate(imgs)]
        y = apply(_tensor(imgs), "elastic_transform", s, Replay([shift, ux, uy]))
        d = _mad(y, _tensor(ref))
        assert d <= TOL, f"elastic_transform severity {s}: {d:.3f}/255 from the original definition"
