"""The static model catalog behind `robench models`: every registered name with its input size, normalisation
and parameter count, computed without importing torch or timm and without building a model (well under a second).

This module is also the one definition of the architectures (`ARCHS`, read by `robench.zoo.registry`) and of the
demo zoo's list and shape (read by `robench.zoo.demo`). The attention variants are NOT listed here: they are the
`@register_attention(name, params=...)` declarations in robench/zoo/attention.py, read from that file's source
with `ast` (importing it would import torch), or from the live registry once that module is imported (so a variant
registered from outside the package is listed too).

Parameter counts are exact, derived from the timm ViT layout (patch embedding, class token, position embedding,
pre-norm blocks with qkv bias, final norm, linear head) plus each attention variant's declared parameters. The
test suite checks every row against the real registry (`robench.zoo.registry.list_models`, which builds each
model on the meta device), so this table cannot drift from what `create_model` builds.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

_ATTENTION_SOURCE = Path(__file__).with_name("attention.py")


def _declared_variants() -> dict[str, dict[str, str]]:
    """variant -> its extra parameters {name: "heads" | "head_dim"}, in registration order."""
    live = sys.modules.get("robench.zoo.attention")
    if live is not None:
        return {name: dict(cls.extra_params) for name, cls in live.ATTENTION_VARIANTS.items()}
    out = {}
    for node in ast.parse(_ATTENTION_SOURCE.read_text(encoding="utf-8")).body:
        for deco in getattr(node, "decorator_list", ()):
            if isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register_attention":
                params = {kw.arg: ast.literal_eval(kw.value) for kw in deco.keywords}.get("params")
                out[ast.literal_eval(deco.args[0])] = dict(params or {})
    return out


# attention variants, in robench.zoo.attention.ATTENTION_VARIANTS order, with their extra parameters
VARIANT_EXTRA_PARAMS = _declared_variants()
VARIANTS = tuple(VARIANT_EXTRA_PARAMS)

_IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
_HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# arch -> timm name, ViT shape, timm's pretrained config (input 224, bicubic, crop 0.9, 1000 classes)
ARCHS = {
    "deit-tiny": ("deit_tiny_patch16_224", dict(embed_dim=192, depth=12, num_heads=3), _IMAGENET),
    "deit-small": ("deit_small_patch16_224", dict(embed_dim=384, depth=12, num_heads=6), _IMAGENET),
    "deit-base": ("deit_base_patch16_224", dict(embed_dim=768, depth=12, num_heads=12), _IMAGENET),
    "vit-tiny": ("vit_tiny_patch16_224", dict(embed_dim=192, depth=12, num_heads=3), _HALF),
    "vit-small": ("vit_small_patch16_224", dict(embed_dim=384, depth=12, num_heads=6), _HALF),
    "vit-base": ("vit_base_patch16_224", dict(embed_dim=768, depth=12, num_heads=12), _HALF),
}
# The crop each family is evaluated with, as its authors do: DeiT (and the QUEST / Elliptical repositories built
# on its training code) evaluate ImageNet with Resize(256) + CenterCrop(224), crop_pct 0.875 (DeiT's datasets.py);
# the ViT family keeps timm's pretrained cfg (0.9). robench.zoo.registry applies it over timm's cfg.
AUTHORS_CROP_PCT = {arch: 0.875 for arch in ARCHS if arch.startswith("deit-")}
TIMM_CROP_PCT = 0.9
# the demo zoo (robench.zoo.demo): a tiny ViT on 32x32 digits, one per variant with shipped weights
DEMO_VARIANTS = ("standard", "quest", "qnorm", "qknorm", "qknorm-hs", "qknorm-ds", "elliptical", "elliptical-quest")
DEMO_TIMM_KWARGS = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


def variant_params(variant: str, embed_dim: int, num_heads: int) -> int:
    """Parameters an attention variant adds to one block (timm's Attention has qkv and proj only)."""
    size = {"heads": num_heads, "head_dim": embed_dim // num_heads}
    return sum(size[s] for s in _declared_variants()[variant].values())


def vit_params(variant: str = "standard", *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
               embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
               num_classes: int = 1000) -> int:
    """Exact parameter count of timm's VisionTransformer (class token, learned position embedding, qkv bias)."""
    d, hidden = embed_dim, int(embed_dim * mlp_ratio)
    tokens = (img_size // patch_size) ** 2 + 1
    embed = in_chans * patch_size * patch_size * d + d + d + tokens * d  # patch conv (+bias), cls token, pos embed
    block = (2 * d  # norm1
             + 3 * d * d + 3 * d + d * d + d  # qkv, proj
             + 2 * d  # norm2
             + d * hidden + hidden + hidden * d + d  # mlp
             + variant_params(variant, d, num_heads))
    return embed + depth * block + 2 * d + d * num_classes + num_classes


def _row(name, arch, variant, timm_name, input_size, norm, interpolation, crop_pct, num_classes, params,
         timm_kwargs, default_checkpoint) -> dict:
    return dict(name=name, arch=arch, variant=variant, timm_name=timm_name, input_size=input_size,
                mean=norm["mean"], std=norm["std"], interpolation=interpolation, crop_pct=crop_pct,
                num_classes=num_classes, params=params, timm_kwargs=timm_kwargs,
                default_checkpoint=default_checkpoint)


def catalog() -> list[dict]:
    """One dict per registered model (the fields of registry.ModelInfo), in `robench models` order."""
    rows = []
    variants = tuple(_declared_variants())
    for arch, (timm_name, shape, norm) in ARCHS.items():
        for v in variants:
            crop = AUTHORS_CROP_PCT.get(arch, TIMM_CROP_PCT)
            rows.append(_row(f"{arch}-{v}", arch, v, timm_name, (3, 224, 224), norm, "bicubic", crop, 1000,
                             vit_params(v, **shape), {}, None))
    weights = Path(__file__).parent / "weights"
    for v in sorted(DEMO_VARIANTS, key=lambda v: f"demo-{v}"):
        ckpt = weights / f"demo-{v}.safetensors"
        rows.append(_row(f"demo-{v}", "demo-vit", v, "vit_tiny_patch16_224", (3, 32, 32), _HALF, "bilinear", 1.0,
                         10, vit_params(v, num_classes=10, **DEMO_TIMM_KWARGS), dict(DEMO_TIMM_KWARGS),
                         str(ckpt) if ckpt.is_file() else None))
    return rows
