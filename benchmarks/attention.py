"""Forward+backward time of each attention variant vs timm's standard SDPA attention and vs an explicit-softmax
formulation of the same variant.

Shapes: N=197 tokens, head dim 64: deit-tiny (3 heads, dim 192), deit-small (6 heads, dim 384), deit-base (12
heads, dim 768). CPU in fp32 at a batch where one standard fwd+bwd of the first shape takes >= 1 s (found by
doubling, unless --batch), and on CUDA (when present) in bf16 at batch 256. Each measurement: warm-up, then --reps
repetitions interleaved over the variants (so load hits all alike), median reported, ratios vs standard.

    python benchmarks/attention.py [--threads 1] [--reps 5] [--shapes deit-tiny,deit-small]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robench.zoo.attention import ATTENTION_VARIANTS, attention_layer

SHAPES = {"deit-tiny": (192, 3), "deit-small": (384, 6), "deit-base": (768, 12)}


class ExplicitSoftmax(torch.nn.Module):
    """The same attention written as softmax(q kᵀ s) v with a materialised matrix (no fused kernel)."""

    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v, scale = self.attn.attention_inputs(x)
        self.attn.after_attention(v)
        w = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
        o = (w @ v).transpose(1, 2).reshape(B, N, -1)
        return self.attn.proj(o)


def step(mod, x, device, amp):
    x.grad = None
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    with ctx:
        out = mod(x)
    out.float().sum().backward()


def once(mod, x, device, amp):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    step(mod, x, device, amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def build(variant, dim, heads, device, layer_fn=attention_layer):
    kw = {"norm_layer": torch.nn.LayerNorm} if variant == "qknorm" else {}
    torch.manual_seed(0)
    layers = [layer_fn(variant)(dim, num_heads=heads, qkv_bias=True, **kw) for _ in range(2)]
    link = layer_fn.__globals__.get("link_value_chain")  # absent in older robench versions (--against)
    if link is not None:
        link(layers)
    fused = torch.nn.Sequential(*layers).to(device)  # two blocks so elliptical uses its scale
    explicit = torch.nn.Sequential(*[ExplicitSoftmax(m) for m in layers]).to(device)
    return fused, explicit


def cpu_batch(dim, heads):
    b = 8
    while True:
        x = torch.randn(b, 197, dim, requires_grad=True)
        std = build("standard", dim, heads, torch.device("cpu"))[0]
        step(std, x, torch.device("cpu"), False)
        if once(std, x, torch.device("cpu"), False) >= 1.0 or b >= 4096:
            return b
        b *= 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=None, help="CPU batch (default: the first power of 2 taking >= 1 s)")
    ap.add_argument("--gpu-batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shapes", default="deit-tiny,deit-small,deit-base")
    ap.add_argument("--no-explicit", action="store_true")
    ap.add_argument("--against", default=None, help="another attention.py (e.g. an older robench's, from git "
                    "show <rev>:robench/zoo/attention.py) whose variants are timed in the same loop: column 'other'")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = args.shapes.split(",")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), N=197, d=64, {args.reps} reps (median)")
    for device in devices:
        amp = device.type == "cuda"
        batch = args.gpu_batch if amp else (args.batch or cpu_batch(*SHAPES[shapes[0]]))
        for shape in shapes:
            dim, heads = SHAPES[shape]
            x = torch.randn(batch, 197, dim, device=device, requires_grad=True)
            mods = {v: build(v, dim, heads, device) for v in ATTENTION_VARIANTS}
            kinds = ("fused",) if args.no_explicit else ("fused", "explicit")
            if args.against:
                import importlib.util

                spec = importlib.util.spec_from_file_location("other_attention", args.against)
                other = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(other)
                mods = {v: (pair[0], pair[1], build(v, dim, heads, device, other.attention_layer)[0])
                        for v, pair in mods.items()}
                kinds = kinds + ("other",)
            names = ("fused", "explicit", "other")
            times = {(v, kind): [] for v in mods for kind in names}
            for v, pair in mods.items():  # warm-up
                for kind, mod in zip(names, pair):
                    if kind in kinds:
                        step(mod, x, device, amp)
            for _ in range(args.reps):
                for v, pair in mods.items():
                    for kind, mod in zip(names, pair):
                        if kind in kinds:
                            times[(v, kind)].append(once(mod, x, device, amp))
            med = {k: statistics.median(t) * 1e3 for k, t in times.items() if t}
            base = med[("standard", "fused")]
            print(f"\n{device.type} {'bf16' if amp else 'fp32'} {shape} batch {batch}: ms per fwd+bwd (2 blocks)")
            print(f"{'variant':18s} {'fused':>9s} {'explicit':>9s} {'vs std SDPA':>12s} {'vs explicit':>12s}"
                  + (f" {'other':>9s} {'vs other':>9s}" if args.against else ""))
            for v in mods:
                f = med[(v, "fused")]
                e = med.get((v, "explicit"))
                o = med.get((v, "other"))
                print(f"{v:18s} {f:9.1f} {e if e else float('nan'):9.1f} {f / base:11.2f}x "
                      f"{(f / e if e else float('nan')):11.2f}x" + (f" {o:9.1f} {f / o:8.2f}x" if o else ""))


if __name__ == "__main__":
    main()
