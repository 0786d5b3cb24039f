"""What a registered model is (ModelInfo) and the table of extra registered names (`register_model`), below the
registry's lookups and the demo zoo that registers into it: plain data, no torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class ModelInfo:
    name: str
    arch: str
    variant: str
    timm_name: str
    input_size: tuple = (3, 224, 224)
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    num_classes: int = 1000
    params: int | None = None
    timm_kwargs: dict = field(default_factory=dict)
    default_checkpoint: str | None = None  # weights shipped with robench (demo zoo), used when none is given
    # provenance, filled by robench.zoo.sources when the model is built
    source: str = "registry"  # registry | timm | file | python | plugin | module (see robench.zoo.sources)
    checkpoint: str | None = None  # the weights file loaded (None: none)
    # the weights' identity, one rule for every source: the checkpoint file's sha256 when one is loaded, else the
    # sha256 of the built module's state (robench.zoo.sources.state_sha256: user code that builds or loads its own
    # weights), or RANDOM_INIT_SHA for random weights asked for with random_init. Always plain lowercase hex (or
    # the marker): tables show its first 8 characters.
    checkpoint_sha256: str | None = None
    provenance: dict = field(default_factory=dict)  # what defines a non-registry model (code hash, args, norm)
    notes: list = field(default_factory=list)  # one-line notices for the user (the engine logs them)

    @property
    def random_init(self) -> bool:
        """Random weights asked for on purpose (--random-init): flagged random-init in every table."""
        return is_random_init(self.checkpoint_sha256)

    def to_dict(self):
        """The description (notes are messages for the log, not part of it)."""
        d = asdict(self)
        d.pop("notes")
        return d


RANDOM_INIT_SHA = "random-init-seed0"  # what the store records as the checkpoint hash of random weights


def is_random_init(sha) -> bool:
    return isinstance(sha, str) and sha.startswith("random-init")


_EXTRA: dict[str, Callable[[], ModelInfo]] = {}  # name -> its ModelInfo factory (robench.zoo.demo, plugins)


def register_model(name: str, info_fn: Callable[[], ModelInfo]) -> None:
    _EXTRA[name] = info_fn
