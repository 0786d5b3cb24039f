"""The corruption registry: one registration per corruption, every list of names derived from it, and a corruption
registered from outside the package usable in a user's suite TOML, through corrupt_batch and `robench eval`."""

from __future__ import annotations

import pytest
import torch

from robench.corrupt import CORRUPTIONS, corrupt_batch, corruption, get_suite, registry
from robench.errors import RobenchError

HENDRYCKS_ORDER = [  # written out here, independently of the code: the order of Hendrycks & Dietterich's tables
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate"]


def test_lists_are_derived_from_the_registry():
    from robench.corrupt.reference import REPLAYABLE
    from robench.report.results import CORRUPTION_ORDER

    assert list(CORRUPTIONS) == HENDRYCKS_ORDER
    assert list(CORRUPTION_ORDER) == HENDRYCKS_ORDER
    assert set(REPLAYABLE) == {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur",
                               "motion_blur", "snow", "fog", "spatter"}
    defs = {d.name: d for d in registry.registered()}
    assert defs["frost"].validated == defs["elastic_transform"].validated == "hendrycks"
    assert defs["pixelate"].validated == "imagecorruptions" and all(defs[n].reference for n in HENDRYCKS_ORDER)
    # the families match the shipped suites' categories
    cifar = get_suite("cifar10-c")
    assert all(defs[n].family == cifar.family(n) for n in HENDRYCKS_ORDER)


@pytest.fixture
def toy_corruption():
    # registered from outside robench, as a user would
    @corruption("toy_darken", family="digital")
    def toy_darken(x, p, draws, **_):
        return x * (1 - p)

    yield "toy_darken"
    registry.unregister("toy_darken")


def _suite(tmp_path, name="toys"):
    p = tmp_path / f"{name}.toml"
    p.write_text(f'name = "{name}"\nparams = "cifar"\n'
                 '[corruptions.toy_darken]\nseverity = [0.1, 0.2, 0.3, 0.5, 1.0]\n'
                 '[corruptions.contrast]\ncategory = "digital"\n')
    return p


def test_user_corruption_in_a_user_suite(tmp_path, toy_corruption):
    suite = get_suite(str(_suite(tmp_path)))
    assert suite.corruptions == ["toy_darken", "contrast"]
    assert suite.category("toy_darken") == "digital"  # the registered family
    x = torch.full((2, 3, 32, 32), 0.8)
    y = corrupt_batch(x, "toy_darken", 4, [0, 1], suite=suite)
    assert torch.allclose(y, torch.full_like(x, 0.4), atol=1 / 255)  # 0.8 * (1 - 0.5), truncated to 8 bits
    assert torch.count_nonzero(corrupt_batch(x, "toy_darken", 5, [0, 1], suite=suite)) == 0
    with pytest.raises(RobenchError, match="imagecorruptions has no"):
        corrupt_batch(x, "toy_darken", 1, [0, 1], suite=suite, backend="reference")
    from robench.report.results import corruption_rank

    assert corruption_rank("toy_darken", "digital") > corruption_rank("saturate", "digital")


def test_unregistered_name_in_a_suite_is_rejected(tmp_path):
    with pytest.raises(RobenchError, match="unknown corruption 'toy_darken'.*@robench.corrupt.corruption"):
        get_suite(str(_suite(tmp_path, "toys2")))


def test_registering_a_name_twice_is_an_error(toy_corruption):
    with pytest.raises(RobenchError, match="already registered"):
        corruption("toy_darken")(lambda x, p, draws: x)
    with pytest.raises(RobenchError, match="built in"):
        registry.unregister("fog")
    with pytest.raises(RobenchError, match="family"):
        corruption("toy_bad", family="colour")


def test_user_corruption_through_robench_eval(tmp_path, toy_corruption, run_cli):
    suite = _suite(tmp_path, "toys3")
    code, out, err = run_cli("eval", "--model", "demo-standard", "--data", "digits", "--limit", "24",
                             "--corruptions", suite, "--severity", "5", "--out", tmp_path / "res", "-q", "--json")
    assert code == 0, err
    from robench.run.store import Store

    res = Store(tmp_path / "res").results()
    cor = res[res["threat"] == "corruption"].set_index("corruption")
    assert set(cor.index) == {"toy_darken", "contrast"}
    assert cor.loc["toy_darken", "category"] == "digital"
    # severity 5 blacks every image out: the model predicts one class for all of them
    preds = Store(tmp_path / "res").outcomes(int(cor.loc["toy_darken", "cell_id"]))
    assert len(preds) == 24 and preds.filter(like="pred").nunique().max() == 1


def test_suite_modules_register_corruptions_for_the_cli(tmp_path, run_cli):
    (tmp_path / "my_corruptions.py").write_text(
        "from robench.corrupt import corruption\n\n"
        "@corruption('toy_bright', family='weather')\n"
        "def toy_bright(x, p, draws, **_):\n"
        "    return x + p\n")
    suite = tmp_path / "bright.toml"
    suite.write_text('name = "bright"\nparams = "cifar"\nmodules = ["my_corruptions.py"]\n'
                     '[corruptions.toy_bright]\nseverity = [0.1, 0.2, 0.3, 0.4, 1.0]\n')
    try:
        out = tmp_path / "render"
        code, _, err = run_cli("corrupt", _digit_png(tmp_path), "--out", out, "--suite", suite,
                               "--corruption", "toy_bright", "--severity", "5")
        assert code == 0, err
        from PIL import Image
        import numpy as np

        img = np.asarray(Image.open(next(out.rglob("*.png"))))
        assert img.min() == 255  # x + 1.0, clipped: white
    finally:
        registry.unregister("toy_bright")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nmodules = ["nowhere.py"]\n[corruptions.fog]\n')
    with pytest.raises(RobenchError, match="corruption module not found"):
        get_suite(str(bad))


def _digit_png(tmp_path):
    from PIL import Image
    import numpy as np

    p = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 200).astype(np.uint8)).save(p)
    return p
