"""Attention variants, the model registry, checkpoint loading.

Loaded lazily: `robench.zoo.catalog` (what `robench models` lists) must not pull in torch and timm.
"""

_EXPORTS = {
    "ATTENTION_VARIANTS": "robench.zoo.attention", "attention_layer": "robench.zoo.attention",
    "set_elliptical_adaptive": "robench.zoo.attention", "register_attention": "robench.zoo.attention",
    "link_value_chain": "robench.zoo.attention",
    "convert_checkpoint": "robench.zoo.registry", "load_state_dict": "robench.zoo.checkpoint",
    "RobenchModel": "robench.zoo.registry", "create_model": "robench.zoo.registry",
    "list_models": "robench.zoo.registry", "model_info": "robench.zoo.registry",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robench.zoo' has no attribute {name!r}")
