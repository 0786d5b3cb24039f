"""Model registry and factory: `create_model("deit-tiny-quest")`, `create_model("timm:resnet50")`, `list_models()`.

Names are `<arch>-<variant>`; `deit-<variant>` means the tiny size. Every model comes wrapped in `RobenchModel`,
which takes images in [0, 1] and applies the model's own normalisation.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from robench._version import __version__
from robench.paths import atomic_write
from robench.errors import RobenchError, suggest
import robench.zoo.demo  # noqa: F401  (registers the demo zoo, demo-<variant>, before any lookup)
from robench.zoo import catalog
from robench.zoo.attention import ATTENTION_VARIANTS, attention_layer, link_value_chain
from robench.zoo.checkpoint import (WRAPPER_PREFIXES, file_sha256, find_key, fit_keys, guess_variant, load_into,
                                    load_state_dict, strip_prefixes)
# ModelInfo and register_model live in robench.zoo.info (below the demo zoo, which registers with them); imported
# here under their public names
from robench.zoo.info import _EXTRA, RANDOM_INIT_SHA, ModelInfo, is_random_init, register_model  # noqa: F401

ARCHS = {arch: timm_name for arch, (timm_name, _shape, _norm) in catalog.ARCHS.items()}  # arch -> timm name
ARCH_ALIASES = {"deit": "deit-tiny", "vit": "vit-tiny"}
class RobenchModel(nn.Module):
    """A classifier that takes images in [0, 1] and normalises them itself: logits = net((x − mean) / std).
    With info.mean = info.std = None the net takes the [0, 1] images unchanged."""

    def __init__(self, net: nn.Module, info: ModelInfo):
        super().__init__()
        self.net = net
        self.info = info
        for key in ("mean", "std"):
            v = getattr(info, key)
            self.register_buffer(key, None if v is None else torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1),
                                 persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @property
    def name(self) -> str:
        return self.info.name

    def restricted(self, classes: list[int]) -> "RobenchModel":
        """The same model with its logits restricted to `classes` (in that order), e.g. ImageNet-A's 200 of
        ImageNet-1k's 1000: logit j of the result is logit classes[j] of this model. Shares the weights."""
        import dataclasses

        info = dataclasses.replace(self.info, num_classes=len(classes))
        return RobenchModel(ClassSubset(self.net, classes), info).train(self.training)


class ClassSubset(nn.Module):
    """net followed by a fixed selection of its logits."""

    def __init__(self, net: nn.Module, classes: list[int]):
        super().__init__()
        self.net = net
        self.register_buffer("classes", torch.as_tensor(classes, dtype=torch.long), persistent=False)

    def forward(self, x):
        return self.net(x).index_select(1, self.classes.to(x.device))


def _split_name(name: str) -> tuple[str, str]:
    for arch in sorted(list(ARCHS) + list(ARCH_ALIASES), key=len, reverse=True):
        if name.startswith(arch + "-") and name[len(arch) + 1:] in ATTENTION_VARIANTS:
            return ARCH_ALIASES.get(arch, arch), name[len(arch) + 1:]
    raise KeyError(name)


def model_names(include_aliases: bool = False) -> list[str]:
    archs = list(ARCHS) + (list(ARCH_ALIASES) if include_aliases else [])
    names = [f"{a}-{v}" for a in archs for v in ATTENTION_VARIANTS]
    return names + sorted(_EXTRA)


def model_info(name: str) -> ModelInfo:
    """Static description of a registered model name (no weights built)."""
    if name in _EXTRA:
        return _EXTRA[name]()
    if name.startswith("timm:"):
        timm_name = name[5:]
        if not timm.is_model(timm_name):
            raise RobenchError(f"unknown timm model '{timm_name}'" + suggest(timm_name, timm.list_models()))
        return _with_cfg(ModelInfo(name=name, arch=timm_name, variant="timm", timm_name=timm_name))
    try:
        arch, variant = _split_name(name)
    except KeyError:
        raise RobenchError(f"unknown model '{name}'" + suggest(name, model_names(include_aliases=True))
                           + "; see `robench models`") from None
    return _with_cfg(ModelInfo(name=name, arch=arch, variant=variant, timm_name=ARCHS[arch]))


def _with_cfg(info: ModelInfo) -> ModelInfo:
    cfg = timm.get_pretrained_cfg(info.timm_name)
    if cfg is not None:
        info.input_size = tuple(cfg.input_size)
        info.mean, info.std = tuple(cfg.mean), tuple(cfg.std)
        info.interpolation = cfg.interpolation
        info.crop_pct = cfg.crop_pct
        info.num_classes = cfg.num_classes or info.num_classes
    info.crop_pct = catalog.AUTHORS_CROP_PCT.get(info.arch, info.crop_pct)  # DeiT: its authors' 256/224
    return info


def classifier_key(info: ModelInfo) -> str:
    """Prefix of the classifier's parameters in the net's state dict (used to infer num_classes)."""
    if info.variant == "timm":
        cfg = timm.get_pretrained_cfg(info.timm_name)
        clf = cfg.classifier if cfg is not None and cfg.classifier else "head"
        return clf if isinstance(clf, str) else clf[0]
    return "head"


def _check_timm_entry(timm_name: str) -> None:
    """robench's names build timm's own architectures: refuse a timm registry entry that code outside timm
    replaced (a research file's @register_model under timm's name, imported before robench could isolate it)."""
    from timm.models import model_entrypoint

    try:
        fn = model_entrypoint(timm_name)
    except Exception:
        return  # unknown names: timm.create_model says so
    where = getattr(fn, "__module__", "") or ""
    if not where.startswith("timm."):
        raise RobenchError(f"timm's model '{timm_name}' was replaced in timm's registry by {where}.{timm_name} (code "
                           "registered under timm's name with @register_model); robench builds timm's own "
                           "architecture: evaluate that code as --model path/to/file.py:NAME, or import it after "
                           "building robench's models")


def build_net(info: ModelInfo, num_classes: int, **overrides) -> nn.Module:
    _check_timm_entry(info.timm_name)
    kwargs = {**info.timm_kwargs, **overrides}
    if info.variant != "timm":
        kwargs["attn_layer"] = attention_layer(info.variant)
    net = timm.create_model(info.timm_name, pretrained=False, num_classes=num_classes, **kwargs)
    link_value_chain(net)  # per-instance cross-block state (elliptical); a no-op for the other variants
    return net


def create_model(name: str, num_classes: int | None = None, checkpoint=None, *, checkpoint_key: str | None = None,
                 random_init: bool = False, **overrides) -> RobenchModel:
    """Build a registered model, optionally loading a checkpoint (num_classes is then inferred from its head).

    `overrides` go to timm (e.g. depth=2, embed_dim=32, num_heads=2, img_size=32, patch_size=8 for tiny tests).
    The returned model is in eval mode. random_init=True ignores shipped default weights (seeded random weights).
    """
    info = model_info(name)
    state = None
    if checkpoint is None and not random_init:
        checkpoint = info.default_checkpoint
    if checkpoint is not None:
        state, meta = load_state_dict(checkpoint, key=checkpoint_key)
        _check_meta(info, meta, checkpoint)
        inferred = find_key(state, classifier_key(info) + ".weight")
        if num_classes is None and inferred is not None and inferred.ndim >= 1:
            num_classes = int(inferred.shape[0])
    info.num_classes = int(num_classes if num_classes is not None else info.num_classes)
    if "img_size" in overrides:
        size = overrides["img_size"]
        info.input_size = (3, size, size) if isinstance(size, int) else (3, *size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # without a checkpoint the (random) weights are still the same every time
        net = build_net(info, info.num_classes, **overrides)
    info.params = sum(p.numel() for p in net.parameters())
    if state is not None:
        load_into(net, state, info, checkpoint)
    return RobenchModel(net, info).eval()


def _check_meta(info: ModelInfo, meta: dict, path) -> None:
    """A safetensors checkpoint written by robench records its variant: refuse one saved for another variant."""
    saved = (meta or {}).get("variant")
    if saved and saved != "unknown" and info.variant not in ("timm", saved):
        raise RobenchError(f"checkpoint {path} was saved for variant '{saved}', but model '{info.name}' is "
                           f"variant '{info.variant}'; use --model <arch>-{saved}")


def count_params(info: ModelInfo, **overrides) -> int:
    """Parameter count without allocating weights (built on the meta device)."""
    with torch.device("meta"):
        net = build_net(info, info.num_classes, **overrides)
    return sum(p.numel() for p in net.parameters())


def list_models(with_params: bool = True) -> list[ModelInfo]:
    infos = []
    for name in model_names():
        info = model_info(name)
        if with_params and info.params is None:
            info.params = count_params(info)
        infos.append(info)
    return infos


def convert_checkpoint(src, dst, model: str | None = None, key: str | None = None) -> dict:
    """Write a clean safetensors copy of a checkpoint with metadata. With `model`, it is validated by loading."""
    from safetensors.torch import save_file

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise RobenchError(f"output must end in .safetensors: {dst}")
    state, meta = load_state_dict(src, key=key)
    meta_out = {"format": "pt", "robench_version": __version__, "source": Path(src).name,
                "source_sha256": file_sha256(src)}
    if model is not None:
        net = create_model(model, checkpoint=src, checkpoint_key=key)
        state = fit_keys(state, net.net.state_dict())  # the keys as the model loads them
        info = model_info(model)
        meta_out.update(model=model, arch=info.arch, variant=info.variant, num_classes=str(net.info.num_classes))
    else:
        state = strip_prefixes(state, WRAPPER_PREFIXES)[-1]  # DDP / torch.compile wrappers only
        meta_out.update(arch=meta.get("arch", "unknown"), variant=meta.get("variant", guess_variant(state)))
        head = find_key(state, "head.weight")
        if head is not None:
            meta_out["num_classes"] = str(head.shape[0])
    state = {k: v.contiguous() for k, v in state.items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda tmp: save_file(state, str(tmp), metadata=meta_out))
    return meta_out
