"""PGD over several eps: robench's batched sweep vs the plain batched loop (the floor) vs torchattacks looped over eps.

    python benchmarks/attacks.py --model linear --threads 1            # the engine's own overhead (near-free model)
    python benchmarks/attacks.py --model deit-tiny --batch 8 --reps 3  # CPU defaults on a ViT
    python benchmarks/attacks.py --model resnet18-cifar --device cuda --amp bf16 --batch 256

Models (`--model`): `linear` (a linear classifier on 3x224x224: the model costs almost nothing, so what is left is
the engine's own work), `resnet18-cifar` (a CIFAR-10 ResNet-18 built here: timm resnet18 with a 3x3 stem, no
max-pool, 32x32 inputs, 10 classes) or any robench registry name (e.g. deit-tiny = deit-tiny-standard). Weights are
random; the head is replaced by a nearest-centroid head on the benchmark images (classes spread, margins a few PGD
steps must overcome). Labels = the model's own clean predictions, for every tool, so every sample starts correct.

Three tools, same inputs, same PGD (step 2.5*eps/steps, random start or not), each warmed up, then timed `--reps`
times INTERLEAVED (tool A, tool B, tool C, A, B, C, ...) so the machine's load hits all alike; medians reported:
- robench: `run_attack` (early exit, per-sample counter-based random starts, invariant checks on every iterate);
- plain: the plain batched loop over the same rows (every (sample, eps) pair in one batch, per-row eps, torch's
  RNG, no checks, no early exit): the floor an engine can approach;
- torchattacks: torchattacks.PGD looped over the eps.
Per-row-step cost = time / (PGD iterations of one row actually run): robench's early exit runs fewer of them, so
this compares the cost of a step, not how many steps each needs (robench without random start reuses the clean
pass's gradient for every row's first iteration: that iteration is counted). robench also counts a sample broken if ANY iterate is
misclassified (torchattacks and plain look only at the final iterate), so its robust accuracy can be lower.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import fmt_eps, make_spec, parse_eps, run_attack


# ---- models --------------------------------------------------------------------------------------------------------
class Linear(nn.Module):
    """logits = W x + b on the flattened image (no normalisation): the near-free model."""

    def __init__(self, shape=(3, 224, 224), n_cls=10):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(shape).prod()), n_cls)

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Wrapped(nn.Module):
    """features -> nearest-centroid head (a fixed linear layer)."""

    def __init__(self, body, feat):
        super().__init__()
        self.body, self.feat = body, feat
        self.head = None

    def forward(self, x):
        return self.head(self.feat(x))


def build(name: str, device):
    torch.manual_seed(0)
    if name == "linear":
        m = Linear()
        return m, m.features, m.fc, (3, 224, 224)
    if name == "resnet18-cifar":
        import timm

        net = timm.create_model("resnet18", num_classes=10)
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        return net, net.forward_features, net.fc, (3, 32, 32)
    from robench.zoo.registry import create_model

    m = create_model(name)
    return m, (lambda x: m.net.forward_head(m.net.forward_features(m.normalize(x)), pre_logits=True)), m.net.head, \
        tuple(m.info.input_size)


def centroid_model(name, x, device, n_cls=8, scale=5.0):
    model, feats, head, _ = build(name, device)
    model = model.to(device).eval()
    with torch.no_grad():
        f = feats(x)
        if f.ndim > 2:
            f = f.mean((2, 3))  # resnet: pooled features
        n_cls = min(n_cls, len(x), head.weight.shape[0])
        c = f[:n_cls] - f.mean(0)
        c = c / c.norm(dim=1, keepdim=True)
        if name == "linear":  # logits of a linear model: scale chosen so that the margins are a few steps wide
            c = c * scale * 30 / f.norm(dim=1).mean()
            head.weight.zero_()
            head.bias.fill_(-1e3)
            head.weight[:n_cls] = c
            head.bias[:n_cls] = 0
        else:
            head.weight.zero_()
            head.bias.fill_(-1e3)
            head.weight[:n_cls] = c * scale
            head.bias[:n_cls] = 0
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def images(n, shape, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    return F.interpolate(torch.rand(n, c, max(h // 16, 4), max(w // 16, 4), generator=g), size=(h, w),
                         mode="bilinear").clamp(0, 1).to(device)


# ---- the three tools -------------------------------------------------------------------------------------------------
class AmpModel(nn.Module):
    def __init__(self, model, amp):
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model(x).float()


def plain_loop(f, x, y, eps, steps, random_start):
    """The floor: all (eps, sample) rows in one batch, textbook PGD (torchattacks' update), no checks, no early exit."""
    E, B = len(eps), len(x)
    xs = x.repeat(E, 1, 1, 1)
    ys = y.repeat(E)
    e = torch.tensor(eps, device=x.device, dtype=x.dtype).repeat_interleave(B).view(-1, 1, 1, 1)
    a = 2.5 * e / steps
    xa = xs.clone()
    if random_start:
        xa = (xa + torch.empty_like(xa).uniform_(-1, 1) * e).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(f(xa), ys, reduction="sum"), xa)
        xa = xa.detach() + a * g.sign()
        xa = (xs + torch.clamp(xa - xs, -e, e)).clamp(0, 1)
    with torch.no_grad():
        ok = (f(xa).argmax(1) == ys).view(E, B)
    return ok, E * B * steps


def torchattacks_loop(f, x, y, eps, steps, random_start):
    import torchattacks

    ok = []
    for e in eps:
        adv = torchattacks.PGD(f, eps=e, alpha=2.5 * e / steps, steps=steps, random_start=random_start)(x, y)
        with torch.no_grad():
            ok.append(f(adv).argmax(1) == y)
    return torch.stack(ok), len(eps) * len(x) * steps


def robench_run(model, x, y, eps, steps, random_start, amp, compile=False):
    spec = make_spec("pgd", eps=tuple(eps), steps=steps, step_size="2.5*eps/steps", random_start=random_start)
    res = run_attack(model, x, y, spec, list(range(len(x))), amp_dtype=amp, compile=compile)
    return res.robust, res.info["row_steps"]


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit-tiny-standard", help="linear | resnet18-cifar | a registry name")
    ap.add_argument("--batch", type=int, default=None, help="samples (default: 256 linear/resnet, 8 otherwise)")
    ap.add_argument("--eps", default="1/255,2/255,4/255,8/255")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--random-start", choices=["both", "yes", "no"], default="both")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="robench with compile=True (torch.compile of the step)")
    ap.add_argument("--no-torchattacks", action="store_true")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain loop (slow models: saves time)")
    ap.add_argument("--warmup", type=int, default=None, help="samples in the warm-up call (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    dev = args.device
    eps = parse_eps(args.eps)
    name = "deit-tiny-standard" if args.model == "deit-tiny" else args.model
    shape = build(name, dev)[3]
    batch = args.batch or (256 if name in ("linear", "resnet18-cifar") else 8)
    x = images(batch, shape, dev)
    model = centroid_model(name, x, dev)
    with torch.no_grad():
        y = model(x).argmax(1)
    f = AmpModel(model, amp).eval()
    dname = torch.cuda.get_device_name() if torch.device(dev).type == "cuda" else cpu_name()
    print(f"{name} {shape}, batch {batch}, PGD-{args.steps} at eps {', '.join(fmt_eps(e) for e in eps)}; device {dev} "
          f"({dname}), {torch.get_num_threads()} thread(s), torch {torch.__version__}, amp {args.amp or 'fp32'}, "
          f"{len(set(y.tolist()))} predicted classes, {args.reps} reps (median), "
          f"{time.strftime('%Y-%m-%d')}")
    starts = {"both": [True, False], "yes": [True], "no": [False]}[args.random_start]
    for rs in starts:
        def make(xx, yy):
            tools = {"robench": lambda: robench_run(model, xx, yy, eps, args.steps, rs, amp, args.compile)}
            if not args.no_plain:
                tools["plain"] = lambda: plain_loop(f, xx, yy, eps, args.steps, rs)
            if not args.no_torchattacks:
                tools["torchattacks"] = lambda: torchattacks_loop(f, xx, yy, eps, args.steps, rs)
            return tools

        tools = make(x, y)
        times = {k: [] for k in tools}
        out = {}
        w = args.warmup or batch
        for k, fn in make(x[:w], y[:w]).items():  # warm-up (compile, allocator, caches)
            fn()
        for _ in range(args.reps):
            for k, fn in tools.items():
                t, out[k] = timed(fn, dev)
                times[k].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        per = {k: med[k] / out[k][1] for k in tools}
        print(f"\nrandom start {'yes' if rs else 'no'}:")
        print(f"{'tool':13s} {'median s':>9s} {'row-steps':>9s} {'us/row-step':>11s}  robust acc per eps")
        for k in tools:
            acc = out[k][0].float().mean(1).tolist()
            print(f"{k:13s} {med[k]:9.3f} {out[k][1]:9d} {per[k] * 1e6:11.1f}  " + " ".join(f"{a:.3f}" for a in acc))
        if "plain" in tools:
            print(f"robench per-row-step cost / plain loop's: {per['robench'] / per['plain']:.2f}x; "
                  f"robench wall time / plain's: {med['robench'] / med['plain']:.2f}x")
        if "torchattacks" in tools:
            print(f"speed-up robench vs torchattacks (wall): {med['torchattacks'] / med['robench']:.2f}x")


if __name__ == "__main__":
    main()
