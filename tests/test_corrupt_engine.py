"""corrupt_batch API: shapes, ranges, determinism across batch size / order, suites, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robench.corrupt import CORRUPTIONS, corrupt_batch, get_suite
from robench.errors import RobenchError
from robench.seeding import sample_seeds


def _images(n, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images (a few blobs) so blurs and colour ops have something to act on
    base = torch.rand(n, 3, h // 8, w // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_batch_size_and_order_do_not_change_results(corruption):
    x = _images(7)
    idx = list(range(7))
    seeds = sample_seeds(0, idx, corruption, 3)
    full = corrupt_batch(x, corruption, 3, seeds)
    assert full.shape == x.shape and full.dtype == x.dtype
    assert full.min() >= 0 and full.max() <= 1
    assert not torch.equal(full, x), f"{corruption} left the images unchanged"
    singles = torch.cat([corrupt_batch(x[i:i + 1], corruption, 3, seeds[i:i + 1]) for i in idx])
    assert torch.equal(full, singles)
    perm = [3, 6, 0, 5, 1, 4, 2]
    shuffled = corrupt_batch(x[perm], corruption, 3, [seeds[i] for i in perm])
    assert torch.equal(shuffled, full[perm])


@pytest.mark.parametrize("corruption", ["gaussian_noise", "fog", "glass_blur", "frost", "snow"])
def test_different_seeds_differ(corruption):
    x = _images(1).repeat(2, 1, 1, 1)
    y = corrupt_batch(x, corruption, 2, [1, 2])
    assert not torch.equal(y[0], y[1])


def test_severity_increases_noise():
    x = _images(4, 64, 64)
    stds = [(corrupt_batch(x, "gaussian_noise", s, [0, 1, 2, 3]) - x).std().item() for s in range(1, 6)]
    assert stds == sorted(stds) and stds[0] > 0.05


def test_cifar_parameters_come_from_the_suite_file():
    x = _images(4, 32, 32)
    seeds = [0, 1, 2, 3]
    std_in = (corrupt_batch(x, "gaussian_noise", 5, seeds) - x).std().item()
    std_cf = (corrupt_batch(x, "gaussian_noise", 5, seeds, suite="cifar10-c") - x).std().item()
    # ImageNet-C severity 5 is N(0, 0.38^2), CIFAR-10-C severity 5 is N(0, 0.10^2) (before clipping)
    assert std_cf < 0.12 < 0.2 < std_in


def test_user_suite_by_path(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('name = "mine"\nparams = "imagenet"\n[corruptions.contrast]\ncategory = "digital"\n'
                 'severity = [0.0, 0.0, 0.0, 0.0, 0.0]\n')
    x = _images(2, 32, 32)
    y = corrupt_batch(x, "contrast", 1, [0, 1], suite=str(p))
    means = x.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(y, torch.floor(means.expand_as(x) * 255 + 1e-3) / 255, atol=1e-6)
    assert get_suite("mine") is get_suite(str(p))  # found by name once loaded by path
    with pytest.raises(RobenchError, match="changes the parameters"):
        corrupt_batch(x, "contrast", 1, [0, 1], suite=str(p), backend="reference")


def test_dtype_and_device_preserved():
    x = _images(2, 32, 32).double()
    assert corrupt_batch(x, "brightness", 1, [0, 1]).dtype == torch.float64
    h = _images(2, 32, 32).half()
    assert corrupt_batch(h, "zoom_blur", 1, [0, 1]).dtype == torch.float16


def test_suites():
    s = get_suite("imagenet-c")
    assert s.name == "imagenet-c" and s.params == "imagenet" and len(s.corruptions) == 15
    assert s.corruptions[0] == "gaussian_noise" and s.corruptions[-1] == "jpeg_compression"
    assert s.alexnet_err("gaussian_noise") == pytest.approx(0.886428)
    assert s.alexnet_err("jpeg_compression") == pytest.approx(0.606500)
    assert s.alexnet_clean_err == pytest.approx(0.435)
    assert s.category("frost") == "weather" and s.category("pixelate") == "digital"
    assert s.severities == [1, 2, 3, 4, 5]
    extra = get_suite("imagenet-c-extra")
    assert extra.corruptions == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert extra.alexnet_err("spatter") is None and extra.alexnet_clean_err is None
    cifar = get_suite("cifar10-c")
    assert cifar.params == "cifar" and len(cifar.corruptions) == 19
    assert cifar.severity_params("jpeg_compression", 1) == 80
    # an extra corruption is found through the parameter family
    assert s.severity_params("saturate", 5) == [20, 0.2]


@pytest.mark.parametrize("call, match", [
    (lambda x: corrupt_batch(x, "gausian_noise", 1, [0]), "did you mean: gaussian_noise"),
    (lambda x: corrupt_batch(x, "fog", 6, [0]), "severity"),
    (lambda x: corrupt_batch(x, "fog", 0, [0]), "severity"),
    (lambda x: corrupt_batch(x, "fog", 1, [0, 1]), "one seed per image"),
    (lambda x: corrupt_batch(x, "fog", 1, [0], suite="imagenet-cc"), "did you mean: imagenet-c"),
    (lambda x: corrupt_batch(x, "fog", 1, [0], backend="gpu"), "backend"),
    (lambda x: corrupt_batch(x[..., :20, :20], "fog", 1, [0]), "at least 32"),
    (lambda x: corrupt_batch(x, "fog", 1, [0], suite="cifar10-c", backend="reference"), "ImageNet-C"),
])
def test_bad_input_is_a_robench_error(call, match):
    with pytest.raises(RobenchError, match=match):
        call(_images(1, 32, 32))


def test_reference_backend_runs_and_is_deterministic():
    x = _images(3, 32, 32)
    a = corrupt_batch(x, "gaussian_noise", 2, [5, 6, 7], backend="reference")
    b = corrupt_batch(x[1:], "gaussian_noise", 2, [6, 7], backend="reference")
    assert a.shape == x.shape and torch.equal(a[1:], b)
    # uint8 round trip: every value is a multiple of 1/255
    assert np.allclose((a * 255).numpy(), np.round((a * 255).numpy()), atol=1e-4)


def test_corruption_cache_keeps_only_what_pays():
    from robench.run.engine import CorruptionCache

    x = torch.floor(_images(2, 32, 32) * 255) / 255  # on the 8-bit grid
    cache = CorruptionCache(budget_mb=16)
    cache.put(("fog", 3), x, corrupt_s=10.0)  # slow to compute: kept
    assert torch.equal(cache.get(("fog", 3), "cpu"), x)
    cache.put(("brightness", 1), x, corrupt_s=1e-9)  # cheaper to recompute than to store and read back
    assert cache.get(("brightness", 1), "cpu") is None and "brightness" in cache.recompute
    cache.put(("brightness", 2), x, corrupt_s=10.0)  # decided once per corruption
    assert cache.get(("brightness", 2), "cpu") is None
    cache.put(("zoom_blur", 1), x + 1e-4)  # off the 8-bit grid: never cached
    assert cache.get(("zoom_blur", 1), "cpu") is None
