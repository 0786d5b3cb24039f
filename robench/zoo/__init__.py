"""Attention variants, the model registry, checkpoint loading."""

from robench.zoo.attention import ATTENTION_VARIANTS, attention_layer, set_elliptical_adaptive  # noqa: F401
from robench.zoo.checkpoint import convert_checkpoint, load_state_dict  # noqa: F401
from robench.zoo.registry import RobenchModel, create_model, list_models, model_info  # noqa: F401
