"""The demo zoo: one tiny ViT per attention variant, trained on the digits (robench.data.digits), named
`demo-<variant>`. Weights ship inside the package (robench/zoo/weights/demo-<variant>.safetensors), so
`create_model("demo-quest")` is ready to use; `robench train-demo` (robench.zoo.train_demo) remakes them.

Architecture (all variants alike, only the attention differs): timm ViT, 32×32 input, patch 4 (64 tokens + class
token), width 64, 4 blocks, 4 heads of dim 16, MLP ratio 2; about 0.14 M parameters. Inputs are normalised with
mean = std = 0.5 (pixels [0, 1] → [−1, 1]).
"""

from __future__ import annotations

from pathlib import Path

from robench.zoo.catalog import DEMO_TIMM_KWARGS, DEMO_VARIANTS  # (one definition, shared with the catalog)
from robench.zoo.info import ModelInfo, register_model

WEIGHTS_DIR = Path(__file__).parent / "weights"


def demo_name(variant: str) -> str:
    return f"demo-{variant}"


def demo_checkpoint(variant: str) -> Path:
    """Path of the shipped checkpoint of a demo variant (it may not exist in a source tree being retrained)."""
    return WEIGHTS_DIR / f"{demo_name(variant)}.safetensors"


def demo_info(variant: str) -> ModelInfo:
    """Static description of `demo-<variant>`; `default_checkpoint` is the shipped weights (None if absent)."""
    ckpt = demo_checkpoint(variant)
    return ModelInfo(
        name=demo_name(variant), arch="demo-vit", variant=variant, timm_name="vit_tiny_patch16_224",
        input_size=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear",
        crop_pct=1.0, num_classes=10, timm_kwargs=dict(DEMO_TIMM_KWARGS),
        default_checkpoint=str(ckpt) if ckpt.is_file() else None,
    )


def demo_model_names() -> list[str]:
    return [demo_name(v) for v in DEMO_VARIANTS]


for _v in DEMO_VARIANTS:
    register_model(demo_name(_v), lambda v=_v: demo_info(v))
