"""Forward+backward time of each attention variant vs standard SDPA and vs an explicit-softmax formulation.

Shapes: N=197 tokens, head dim 64, deit-tiny (3 heads, dim 192) and deit-small (6 heads, dim 384).
Runs on CPU, and on CUDA when available (bf16 autocast there). Prints ms per fwd+bwd and the ratios.

    python benchmarks/attention.py [--batch 32] [--reps 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from robench.zoo.attention import ATTENTION_VARIANTS, attention_layer


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


def bench(mod, x, reps, device, amp):
    def step():
        x.grad = None
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
        with ctx:
            out = mod(x)
        out.float().sum().backward()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, N=197, d=64")
    for device in devices:
        amp = device.type == "cuda"
        for shape, (dim, heads) in {"deit-tiny": (192, 3), "deit-small": (384, 6)}.items():
            x = torch.randn(args.batch, 197, dim, device=device, requires_grad=True)
            base = None
            print(f"\n{device.type}{' bf16' if amp else ' fp32'} {shape}: ms per fwd+bwd")
            print(f"{'variant':18s} {'fused':>8s} {'explicit':>9s} {'vs std SDPA':>12s} {'vs explicit':>12s}")
            for variant in ATTENTION_VARIANTS:
                kw = {"norm_layer": torch.nn.LayerNorm} if variant == "qknorm" else {}
                layers = [attention_layer(variant)(dim, num_heads=heads, qkv_bias=True, **kw) for _ in range(2)]
                fused = torch.nn.Sequential(*layers).to(device)  # two blocks so elliptical uses its scale
                explicit = torch.nn.Sequential(*[ExplicitSoftmax(m) for m in layers]).to(device)
                t_fused = bench(fused, x, args.reps, device, amp)
                t_expl = bench(explicit, x, args.reps, device, amp)
                base = base or t_fused
                print(f"{variant:18s} {t_fused:8.2f} {t_expl:9.2f} {t_fused / base:11.2f}x {t_fused / t_expl:11.2f}x")


if __name__ == "__main__":
    main()
