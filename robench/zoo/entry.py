"""The reference to one model that robench.zoo.sources resolves (a plan entry, the API's model, `robench inspect`'s):
plain data, light to import (`robench.run.plan` reads plans with it; nothing here imports torch)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelEntry:
    """One model of a plan. `name` is anything robench.zoo.sources resolves: a registered name, timm:NAME,
    path/to/file.py:Attr, package.module:factory or an entry-point name; `module` an nn.Module (Python API)."""

    name: str
    checkpoint: str | None = None
    label: str | None = None
    checkpoint_key: str | None = None
    num_classes: int | None = None
    random_init: bool = False  # evaluate random weights on purpose (registry models without weights need it)
    args: dict | None = None  # constructor / factory keyword arguments (--model-arg key=value)
    mean: list[float] | None = None  # input normalisation of a user model (default: from the model, else none)
    std: list[float] | None = None
    module: object = field(default=None, repr=False)  # an nn.Module object (Python API; not a plan file key)

    @property
    def display(self) -> str:
        return self.label or self.name
