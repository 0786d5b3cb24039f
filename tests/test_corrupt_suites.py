"""Corruption suites are values: a user file never runs with a shipped suite's parameters, an edited file is
loaded again, suite objects are used as they are, and suites declare their benchmark set (extras apart)."""

from __future__ import annotations

import importlib.resources

import pytest
import torch

from robench.corrupt import CorruptionSuite, corrupt_batch, get_suite, registry
from robench.errors import RobenchError

# written out here, independently of the code: Hendrycks & Dietterich's 15 benchmark corruptions and the 4 extras
BENCHMARK_15 = {"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                "jpeg_compression"}
EXTRAS = {"speckle_noise", "gaussian_blur", "spatter", "saturate"}


def write(path, name, sev="[0.1, 0.2, 0.3, 0.4, 0.5]", extra=""):
    path.write_text(f'name = "{name}"\nparams = "cifar"\n{extra}[corruptions.gaussian_noise]\nseverity = {sev}\n')
    return path


def test_user_suite_named_like_a_shipped_one_is_refused(tmp_path):
    shipped = get_suite("cifar10-c")
    p = write(tmp_path / "heavy.toml", "cifar10-c", "[3.0, 3.0, 3.0, 3.0, 3.0]")
    with pytest.raises(RobenchError, match="heavy.toml is named 'cifar10-c' like a shipped suite but has other values"):
        get_suite(str(p))
    assert get_suite("cifar10-c") is shipped  # the shipped suite is still the shipped one
    assert shipped.severity_params("gaussian_noise", 3) == 0.08
    # a copy of the shipped file (same values) is the same suite
    text = (importlib.resources.files("robench.suites.corruptions") / "cifar10-c.toml").read_text()
    (tmp_path / "copy.toml").write_text(text)
    copy = get_suite(str(tmp_path / "copy.toml"))
    assert [copy.identity(c) for c in copy.corruptions] == [shipped.identity(c) for c in shipped.corruptions]


def test_user_suite_runs_with_its_own_values_and_is_never_found_under_another_name(tmp_path):
    p = write(tmp_path / "mine.toml", "my-heavy", "[3.0, 3.0, 3.0, 3.0, 3.0]")
    mine = get_suite(p)  # a Path works too
    assert mine.severity_params("gaussian_noise", 1) == 3.0 and mine.source == str(p)
    assert get_suite("cifar10-c").severity_params("gaussian_noise", 1) == 0.04
    x = torch.full((1, 3, 32, 32), 0.5)
    heavy = corrupt_batch(x, "gaussian_noise", 1, [7], suite=mine)
    light = corrupt_batch(x, "gaussian_noise", 1, [7], suite="cifar10-c")
    assert (heavy - x).abs().mean() > 5 * (light - x).abs().mean()


def test_edited_user_suite_is_loaded_again(tmp_path):
    p = write(tmp_path / "edit.toml", "edited")
    first = get_suite(str(p))
    assert get_suite(str(p)) is first  # cached while the file is unchanged
    write(p, "edited", "[0.5, 0.6, 0.7, 0.8, 0.9]")
    second = get_suite(str(p))
    assert second.severity_params("gaussian_noise", 1) == 0.5
    assert second.identity("gaussian_noise") != first.identity("gaussian_noise")
    assert get_suite("edited") is second  # the name (compatibility lookup) follows the latest file


def test_suite_object_is_used_as_it_is():
    """corrupt_batch / apply take a CorruptionSuite object, even one no file or name defines."""
    from robench.corrupt import apply

    s = CorruptionSuite(name="cifar10-c", params="cifar", corruptions=["brightness"],
                        table={"brightness": {"category": "weather", "severity": [0.9] * 5}})
    x = torch.full((2, 3, 32, 32), 0.05)
    y = corrupt_batch(x, "brightness", 2, [0, 1], suite=s)
    assert y.min() > 0.9  # 0.9 added to V: the object's values, not shipped cifar10-c's 0.1
    assert torch.equal(apply(x, "brightness", 2, [0, 1], s), y)
    assert get_suite(s) is s
    assert get_suite("cifar10-c").severity_params("brightness", 2) == 0.1


def test_identity_covers_every_value_that_changes_the_images(tmp_path):
    base = get_suite(str(write(tmp_path / "a.toml", "a")))
    same = get_suite(str(write(tmp_path / "c.toml", "a")))
    other_sev = get_suite(str(write(tmp_path / "b.toml", "a", "[0.1, 0.2, 0.3, 0.4, 0.6]")))
    assert base.identity("gaussian_noise") == same.identity("gaussian_noise")  # same values: same identity
    assert base.identity("gaussian_noise") != other_sev.identity("gaussian_noise")
    frost = []
    for k in (1, 2):
        (tmp_path / f"f{k}.toml").write_text(f'name = "f"\nparams = "cifar"\n[corruptions.frost]\n'
                                             f'texture_scale = {0.2 * k}\n')
        frost.append(get_suite(str(tmp_path / f"f{k}.toml")))
    assert frost[0].identity("frost") != frost[1].identity("frost")  # an option changes the images
    renamed = get_suite(str(write(tmp_path / "d.toml", "renamed")))
    assert renamed.identity("gaussian_noise") == base.identity("gaussian_noise")  # the name is not a value


def test_benchmark_sets_and_extras():
    cifar, inet, extra = get_suite("cifar10-c"), get_suite("imagenet-c"), get_suite("imagenet-c-extra")
    assert {c for c in cifar.corruptions if cifar.is_benchmark(c)} == BENCHMARK_15
    assert {c for c in cifar.corruptions if not cifar.is_benchmark(c)} == EXTRAS
    assert all(inet.is_benchmark(c) for c in inet.corruptions) and set(inet.corruptions) == BENCHMARK_15
    assert not any(extra.is_benchmark(c) for c in extra.corruptions)
    for c in EXTRAS:
        assert cifar.category(c) == extra.category(c) == "extra"
    # the family stays available
    assert (cifar.family("speckle_noise"), cifar.family("spatter"), cifar.family("fog")) == ("noise", "weather",
                                                                                            "weather")
    assert cifar.category("fog") == "weather" and inet.category("pixelate") == "digital"


def test_user_suite_benchmark_set(tmp_path):
    p = tmp_path / "u.toml"
    p.write_text('name = "u"\nparams = "cifar"\n[corruptions.fog]\n[corruptions.speckle_noise]\n')
    u = get_suite(str(p))
    assert u.is_benchmark("fog") and not u.is_benchmark("speckle_noise")  # no list: the registered extras are out
    p.write_text('name = "u"\nparams = "cifar"\nbenchmark = ["speckle_noise"]\n[corruptions.fog]\n'
                 '[corruptions.speckle_noise]\n')
    u = get_suite(str(p))
    assert u.is_benchmark("speckle_noise") and u.category("fog") == "extra" and u.family("fog") == "weather"
    p.write_text('name = "u"\nparams = "cifar"\nbenchmark = ["snow"]\n[corruptions.fog]\n')
    with pytest.raises(RobenchError, match=r"u.toml: benchmark must list corruptions of the suite"):
        get_suite(str(p))


def test_registered_corruption_is_benchmark_unless_marked_extra(tmp_path):
    @registry.corruption("toy_extra_dim", family="digital", extra=True)
    def toy(x, p, draws, **_):
        return x * p

    try:
        p = tmp_path / "t.toml"
        p.write_text('name = "t"\n[corruptions.toy_extra_dim]\nseverity = [1, 1, 1, 1, 1]\n[corruptions.fog]\n')
        t = get_suite(str(p))
        assert t.category("toy_extra_dim") == "extra" and t.family("toy_extra_dim") == "digital"
        assert t.is_benchmark("fog")
        assert registry.get("toy_extra_dim") in registry.registered()  # what was registered is listed
    finally:
        registry.unregister("toy_extra_dim")
    assert registry.get("toy_extra_dim") is None
