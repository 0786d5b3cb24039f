"""The static model catalog behind `robench models`: every registered name with its input size, normalisation
and parameter count, computed without importing torch or timm and without building a model (well under a second).

Parameter counts are exact, derived from the timm ViT layout (patch embedding, class token, position embedding,
pre-norm blocks with qkv bias, final norm, linear head) plus each attention variant's own parameters. The test
suite checks every row against the real registry (`robench.zoo.registry.list_models`, which builds each model
on the meta device), so this table cannot drift from what `create_model` builds.
"""

from __future__ import annotations

from pathlib import Path

# attention variants, in robench.zoo.attention.ATTENTION_VARIANTS order
VARIANTS = ("standard", "quest", "qnorm", "qknorm", "qknorm-hs", "qknorm-ds", "elliptical", "elliptical-quest")

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
# the demo zoo (robench.zoo.demo): a tiny ViT on 32x32 digits
DEMO_TIMM_KWARGS = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


def variant_params(variant: str, embed_dim: int, num_heads: int) -> int:
    """Parameters an attention variant adds to one block (timm's Attention has qkv and proj only)."""
    head_dim = embed_dim // num_heads
    return {"qknorm": 4 * head_dim,  # LayerNorm(head_dim) on q and k: weight + bias each
            "qknorm-hs": num_heads,  # qk_scale, one per head
            "qknorm-ds": 2 * head_dim,  # q_scale, k_scale
            }.get(variant, 0)


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
    for arch, (timm_name, shape, norm) in ARCHS.items():
        for v in VARIANTS:
            rows.append(_row(f"{arch}-{v}", arch, v, timm_name, (3, 224, 224), norm, "bicubic", 0.9, 1000,
                             vit_params(v, **shape), {}, None))
    weights = Path(__file__).parent / "weights"
    for v in sorted(VARIANTS, key=lambda v: f"demo-{v}"):
        ckpt = weights / f"demo-{v}.safetensors"
        rows.append(_row(f"demo-{v}", "demo-vit", v, "vit_tiny_patch16_224", (3, 32, 32), _HALF, "bilinear", 1.0,
                         10, vit_params(v, num_classes=10, **DEMO_TIMM_KWARGS), dict(DEMO_TIMM_KWARGS),
                         str(ckpt) if ckpt.is_file() else None))
    return rows
