"""The model under evaluation, checked: before any cell, it must return logits of the right shape for two images;
on every batch its logits must have the right shape and be finite, and every submodule must still be in eval mode
(a forward that calls self.train() is caught). A model exception during a cell becomes one line naming the model,
the cell and the batch (ModelRun.guard)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from robench.attack.base import confidence, confirm
from robench.data.specs import EvalData, TensorData
from robench.errors import RobenchError


class ModelCheckError(RobenchError):
    """A model broke a per-batch check (logits shape, eval mode); the guard adds the cell and the batch."""


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


@dataclass
class ModelRun:
    """A built model (RobenchModel) under a label: its checked forward for the executors."""
    model: object
    forward: object  # the model, or torch.compile(model)
    label: str
    classes: int  # logits per image
    amp: torch.dtype | None = None
    named: list = field(init=False, repr=False)

    def __post_init__(self):
        self.named = list(self.model.named_modules())

    def check_eval_mode(self) -> None:
        """Every submodule in eval mode (cheap: one attribute per module)."""
        for name, m in self.named:
            if m.training:
                raise ModelCheckError(f"model {self.label} put {name or 'itself'} in training mode during its "
                                      "forward; robench evaluates in eval mode (remove the .train() call)")

    def check_logits(self, logits: torch.Tensor, n: int) -> None:
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (n, self.classes):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelCheckError(f"model {self.label} returned logits of shape {got} for a batch of {n} images; "
                                  f"expected ({n}, {self.classes})")
        if not torch.isfinite(logits).all():
            raise RobenchError(f"model {self.label} produced NaN/inf logits (check the checkpoint and --precision)")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        ctx = torch.autocast(x.device.type, dtype=self.amp) if self.amp is not None else nullcontext()
        with torch.no_grad(), ctx:
            out = self.forward(x)
        self.check_logits(out, len(x))
        self.check_eval_mode()
        return out.float()

    def predict(self, x, y, extras: dict):
        """Predictions of one batch with their confidences: (pred, confidence, nll). Under --precision bf16/fp16
        every 'misclassified' verdict of the low-precision forward is re-checked with an fp32 forward (only the
        hits); the rejected ones are counted in `extras` (`rejected_hits`), as the attacks do. confidence: the fp32
        softmax probability of the final predicted class over the model's logits (for masked 200-class data the
        logits are already restricted to the evaluated classes); nll: -log softmax of the true class (fp32)."""
        logits = self.logits(x)
        pred = logits.argmax(1)
        if self.amp is not None:
            pred, rejected = confirm(self.model, x, y, pred)
            extras["rejected_hits"] = extras.get("rejected_hits", 0) + int(rejected.sum())
        conf, nll = confidence(logits, pred, y)
        return pred, conf, nll

    @contextmanager
    def guard(self, cell_name: str, idx: torch.Tensor):
        """A failure inside a cell's batch: one line naming the model, the cell and the batch's samples."""
        where = f"cell {cell_name}, batch of samples {int(idx.min())}..{int(idx.max())}" if len(idx) else cell_name
        try:
            yield
        except ModelCheckError as e:
            raise RobenchError(f"{e} ({where})") from None
        except (RobenchError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as e:
            msg = first_line(e)
            hint = (" (does its forward run under torch.no_grad()? attacks need input gradients)"
                    if "does not require grad" in msg or "does not have a grad_fn" in msg else "")
            raise RobenchError(f"model {self.label} failed on {where}: {type(e).__name__}: {msg}{hint}") from None


def check_logits(model, data: EvalData, label: str, device) -> None:
    """Run the model on the first two samples: it must return a logits tensor (B, classes the data needs)."""
    n = min(2, len(data))
    if n == 0:
        raise RobenchError(f"data {data.spec} holds no samples")
    x = torch.stack([data.dataset[i][0] for i in range(n)]).to(device).float()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise RobenchError(f"model {label} failed on a batch of {data.name} images {tuple(x.shape)}: "
                           f"{type(e).__name__}: {first_line(e)}") from None
    if not isinstance(out, torch.Tensor):
        raise RobenchError(f"model {label} returned a {type(out).__name__}, not a tensor of logits")
    if tuple(out.shape) != (n, data.model_classes):
        raise RobenchError(f"model {label} returned logits of shape {tuple(out.shape)} for {n} {data.name} images; "
                           f"expected ({n}, {data.model_classes}): one logit per class of {data.name}")


def check_readable(data: EvalData) -> None:
    """At least one image decodes (checked in order, so usually after one image): a dataset with no readable
    image is an error before any store or cell exists."""
    if isinstance(data.dataset, TensorData):
        return
    for i in range(len(data)):
        if int(data.dataset[i][1]) >= 0:
            return
    raise RobenchError(f"no readable image in {data.spec}: all {len(data)} images failed to decode (check the files)")
