"""Train the demo zoo (`demo-<variant>`) on the digits train split, deterministically on CPU.

Every variant starts from the same seed: the same initial weights for the parameters they share, the same batch
order and the same augmentation (random shifts of up to 2 px), so only the attention differs. The position
embedding starts as 2-D sin-cos (each token is about one pixel of the 8×8 original, so where it sits is most of what
it says; timm's tiny random init makes training stall for many epochs). AdamW, batch 32, linear warm-up (1 epoch)
and cosine decay. Checkpoints are the timm net's state dict
(`model.net.state_dict()`) in safetensors, with metadata (model, arch, variant, num_classes, robench_version,
seed, epochs, test_acc).

Same machine, same thread count (default 1) → bit-identical checkpoints (deterministic algorithms, seeded generators).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import build_sincos2d_pos_embed

from robench.data.digits import digits_tensors
from robench._version import __version__
from robench.paths import atomic_write
from robench.errors import RobenchError, suggest
from robench.seeding import derive_seed, generator
from robench.zoo.demo import DEMO_VARIANTS, WEIGHTS_DIR, demo_info, demo_name
from robench.zoo.registry import RobenchModel, build_net

EPOCHS = 12
BATCH_SIZE = 32
LR = 2e-3
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 1
LABEL_SMOOTHING = 0.0
MAX_SHIFT = 2


def random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """Shift each image by a random (dy, dx) in [−max_shift, max_shift]², filling with 0 (the background)."""
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dy, dx = torch.randint(0, 2 * p + 1, (2, n), generator=g).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 270) -> float:
    """Top-1 accuracy of `model` (eval mode) on images in [0, 1]."""
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def new_demo_model(variant: str, seed: int = 0) -> RobenchModel:
    """A freshly initialised `demo-<variant>` (ignores the shipped weights); init is seeded with `seed`."""
    info = demo_info(variant)
    info.default_checkpoint = None
    torch.manual_seed(seed)
    net = build_net(info, info.num_classes)
    with torch.no_grad():  # 2-D sin-cos position embedding as the (learnable) starting point
        grid = info.input_size[-1] // info.timm_kwargs["patch_size"]
        n_prefix = net.pos_embed.shape[1] - grid * grid
        net.pos_embed[0, n_prefix:] = build_sincos2d_pos_embed([grid, grid], dim=net.pos_embed.shape[-1])
        net.pos_embed[0, :n_prefix] = 0
    info.params = sum(p.numel() for p in net.parameters())
    return RobenchModel(net, info)


def train_one(variant: str, epochs: int = EPOCHS, seed: int = 0, train_subset: int | None = None,
              log=None) -> RobenchModel:
    """Train one demo model on the digits train split (the first `train_subset` samples if given)."""
    x, y, _ = digits_tensors("train")
    if train_subset is not None:
        x, y = x[:train_subset], y[:train_subset]
    model = new_demo_model(variant, seed)
    g = generator(derive_seed(seed, "demo-train-data"))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR)
    steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
    total, warmup = epochs * steps_per_epoch, WARMUP_EPOCHS * steps_per_epoch
    lr_at = lambda s: LR * (s + 1) / warmup if s < warmup else LR * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))  # noqa: E731
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH_SIZE):
            idx = order[i:i + BATCH_SIZE]
            xb = random_shift(x[idx], g) if MAX_SHIFT else x[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if log is not None:
            log(f"{demo_name(variant)} epoch {epoch + 1}/{epochs} loss {loss.item():.4f}")
    return model.eval()


def save_demo_checkpoint(model: RobenchModel, path, seed: int, epochs: int, test_acc: float) -> None:
    """Write the timm net's state dict with robench metadata (atomic replace)."""
    from safetensors.torch import save_file

    info = model.info
    meta = {"format": "pt", "model": info.name, "arch": info.arch, "variant": info.variant,
            "num_classes": str(info.num_classes), "robench_version": __version__, "seed": str(seed),
            "epochs": str(epochs), "test_acc": f"{test_acc:.4f}", "data": "digits/train"}
    state = {k: v.detach().contiguous() for k, v in model.net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def train_demo(variants=None, out_dir=WEIGHTS_DIR, epochs: int = EPOCHS, seed: int = 0, threads: int | None = 1,
               train_subset: int | None = None, log=None) -> dict[str, float]:
    """Train the demo zoo and write `<out_dir>/demo-<variant>.safetensors`. Returns {variant: clean test accuracy}.

    Deterministic: `torch.use_deterministic_algorithms(True)` and seeded generators; `threads` (default 1) fixes
    torch's intra-op thread count while training (None: leave it), since float sums may depend on it (the shipped
    checkpoints were made with 1). `train_subset` trains on the first n train samples only (quick checks).
    """
    variants = list(variants) if variants else list(DEMO_VARIANTS)
    for v in variants:
        if v not in DEMO_VARIANTS:
            raise RobenchError(f"unknown demo variant '{v}'" + suggest(v, DEMO_VARIANTS)
                               + f"; choose from {', '.join(DEMO_VARIANTS)}")
    if epochs < 1:
        raise RobenchError(f"--epochs must be at least 1, got {epochs}")
    x_test, y_test, _ = digits_tensors("test")
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    results = {}
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        for v in variants:
            t0 = time.perf_counter()
            model = train_one(v, epochs=epochs, seed=seed, train_subset=train_subset, log=log)
            acc = accuracy(model, x_test, y_test)
            save_demo_checkpoint(model, Path(out_dir) / f"{demo_name(v)}.safetensors", seed, epochs, acc)
            results[v] = acc
            if log is not None:
                log(f"{demo_name(v)}: test acc {acc:.4f} ({model.info.params} params, {time.perf_counter() - t0:.1f} s)")
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
    return results
