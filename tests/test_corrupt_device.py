"""Device paths (the torch code that runs on GPUs) against the CPU paths (PIL / OpenCV / numba, the reference's own
operations) with the same inputs and noise; the torch JPEG against PIL; the 8-bit Poisson sampler against scipy's
law. Run on the CPU inside ops.device_paths(); the `cuda` tests repeat the comparison on a GPU when there is one."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from robench.corrupt import apply, corrupt_batch, ops
from robench.corrupt.glass import glass_permutation, glass_permutation_torch
from robench.corrupt.jpeg import jpeg
from robench.corrupt.randomness import Draws, poisson_8bit

PIL = pytest.importorskip("PIL.Image")


def _photos(n=3, size=64):
    skdata = pytest.importorskip("skimage.data")
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket")[:n]:
        a = PIL.fromarray(getattr(skdata, name)()).convert("RGB").resize((size, size), PIL.BILINEAR)
        out.append(np.asarray(a))
    return torch.as_tensor(np.stack(out)).permute(0, 3, 1, 2).contiguous().float() / 255


def _mad(a, b) -> float:
    return (a - b).abs().mean().item() * 255


# corruptions whose CPU run calls PIL / OpenCV / numba / slices where the device path is torch code
DEVICE_PATHS = ["pixelate", "jpeg_compression", "defocus_blur", "gaussian_blur", "glass_blur", "motion_blur", "snow",
                "elastic_transform", "spatter"]


@pytest.mark.parametrize("corruption", DEVICE_PATHS)
@pytest.mark.parametrize("suite", ["imagenet-c", "cifar10-c"])
def test_device_path_matches_cpu_path(corruption, suite):
    x = _photos(3, 64 if suite == "imagenet-c" else 32)
    for s in (1, 3, 5):
        seeds = [11, 12, 13]
        cpu = apply(x, corruption, s, seeds, suite)
        with ops.device_paths():
            dev = apply(x, corruption, s, seeds, suite)
        d = _mad(cpu, dev)
        # the same sums in another order: a few 8-bit truncations flip; the JPEG's float DCT rounds some
        # coefficients the other way than libjpeg's integer one
        bound = 1.0 if corruption == "jpeg_compression" else 0.05
        assert d <= bound, f"{corruption} ({suite}) severity {s}: device path {d:.4f}/255 from the CPU path"
        if corruption in ("pixelate", "motion_blur", "snow"):
            assert torch.equal(cpu, dev), f"{corruption} severity {s}: device path not identical"


def _pil_jpeg(a: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    PIL.fromarray(a).save(buf, "JPEG", quality=q)
    return np.asarray(PIL.open(buf).convert("RGB"))


@pytest.mark.parametrize("quality", [25, 18, 15, 10, 7, 80, 65, 58, 50, 40])  # ImageNet-C, then CIFAR-10-C
def test_torch_jpeg_close_to_pil(quality):
    for size in (224, 32):
        x = _photos(3, size)
        u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        ref = torch.as_tensor(np.stack([_pil_jpeg(a, quality) for a in u8])).permute(0, 3, 1, 2).float()
        ours = jpeg(x, quality).float()
        d = (ours - ref).abs()
        assert d.mean() <= 1.0, f"q={quality} {size}px: mean |torch - PIL| = {d.mean():.3f}/255"
        assert (d > 0).float().mean() < 0.3, f"q={quality} {size}px: {(d > 0).float().mean():.1%} pixels differ"


def test_torch_jpeg_odd_sizes_run():
    x = _photos(2, 64)[..., :45, :37]
    y = jpeg(x, 50)
    assert y.shape == x.shape and y.dtype == torch.uint8
    ref = np.stack([_pil_jpeg(a, 50) for a in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()])
    assert (y.float() - torch.as_tensor(ref).permute(0, 3, 1, 2).float()).abs().mean() <= 1.5


@pytest.mark.parametrize("H, W, d, iters", [(40, 48, 1, 2), (37, 41, 4, 2), (32, 32, 2, 3), (20, 20, 9, 1)])
def test_glass_permutation_torch_equals_sequential_loop(H, W, d, iters):
    g = torch.Generator().manual_seed(H * W + d)
    off = torch.randint(-d, d, (3, iters, max(H - 2 * d, 0), max(W - 2 * d, 0), 2), generator=g)
    assert np.array_equal(glass_permutation_torch(off, H, W, d).numpy(), glass_permutation(off.numpy(), H, W, d))


@pytest.mark.parametrize("c, level", [(60.0, 1), (60.0, 200), (3.0, 128), (500.0, 255)])
def test_poisson_8bit_follows_the_poisson_law(c, level):
    from scipy.stats import poisson

    x = torch.full((1, 3, 128, 128), level / 255)
    s = poisson_8bit(x, c, Draws([level], "cpu")).numpy().ravel()
    lam = level / 255 * c
    n = s.size
    ks = np.arange(int(lam + 6 * np.sqrt(lam) + 6))
    emp = np.array([(s == k).mean() for k in ks])
    th = poisson.pmf(ks, lam)
    # every probability within 5 standard errors of the binomial estimate
    assert np.all(np.abs(emp - th) <= 5 * np.sqrt(th * (1 - th) / n) + 2 / n)
    assert s.min() >= 0 and np.all(s == np.round(s))


def test_shot_noise_off_the_8bit_grid_uses_torch_poisson():
    x = torch.full((1, 3, 40, 40), 0.3337)  # not a multiple of 1/255
    y = apply(x, "shot_noise", 3, [0], quantize=False)
    assert abs((y * 12).mean().item() - 0.3337 * 12) < 0.1


# ---------------------------------------------------------------- on a GPU

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("corruption", ["pixelate", "jpeg_compression", "defocus_blur", "gaussian_blur", "zoom_blur",
                                        "contrast", "brightness", "saturate"])
def test_cuda_deterministic_corruptions_match_cpu(corruption):
    x = _photos(3, 224)
    for s in (1, 3, 5):
        cpu = apply(x, corruption, s, [0, 1, 2])
        gpu = apply(x.cuda(), corruption, s, [0, 1, 2]).cpu()
        bound = 1.0 if corruption == "jpeg_compression" else 0.05
        assert _mad(cpu, gpu) <= bound, f"{corruption} severity {s}: CUDA {_mad(cpu, gpu):.4f}/255 from the CPU"


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("corruption", ["gaussian_noise", "impulse_noise", "speckle_noise", "glass_blur",
                                        "motion_blur", "snow", "fog", "spatter", "elastic_transform", "frost"])
def test_cuda_stochastic_corruptions_match_cpu_with_the_same_draws(corruption):
    from robench.corrupt.randomness import Replay

    class Recorder(Draws):  # CPU draws, recorded to be replayed on the GPU
        def __init__(self, seeds):
            super().__init__(seeds, "cpu")
            self.rec = []

        def random(self, shape=()):
            self.rec.append(super().random(shape))
            return self.rec[-1]

        def uniform(self, low, high, shape=()):
            self.rec.append(Draws.random(self, shape) * (high - low) + low)
            return self.rec[-1]

        def normal(self, loc, scale, shape=()):
            self.rec.append(super().normal(loc, scale, shape))
            return self.rec[-1]

        def integers(self, low, high, shape=()):
            self.rec.append(super().integers(low, high, shape))
            return self.rec[-1]

    x = _photos(3, 224)
    for s in (1, 3, 5):
        rec = Recorder([0, 1, 2])
        cpu = apply(x, corruption, s, rec)
        rec.rec = [r.numpy() for r in rec.rec]
        # uniform / normal draws are recorded scaled: Replay returns them as they are
        gpu = apply(x.cuda(), corruption, s, Replay(rec.rec, "cuda")).cpu()
        assert _mad(cpu, gpu) <= 0.1, f"{corruption} severity {s}: CUDA {_mad(cpu, gpu):.4f}/255 from the CPU"


@pytest.mark.cuda
@cuda
def test_cuda_batch_size_and_order_do_not_change_results():
    from robench.corrupt import CORRUPTIONS
    from robench.seeding import sample_seeds

    x = _photos(3, 64).cuda()
    for c in CORRUPTIONS:
        seeds = sample_seeds(0, [0, 1, 2], c, 3)
        full = corrupt_batch(x, c, 3, seeds)
        singles = torch.cat([corrupt_batch(x[i:i + 1], c, 3, seeds[i:i + 1]) for i in range(3)])
        assert torch.equal(full, singles), c
