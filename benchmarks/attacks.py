"""PGD-10 at 4 eps values on a deit-tiny-sized model: robench's batched eps sweep vs torchattacks PGD looped over eps.

    python benchmarks/attacks.py                      # CPU, batch 8, eps 1,2,4,8/255
    python benchmarks/attacks.py --eps 0.125/255,0.25/255,0.5/255,1/255 --batch 8
    python benchmarks/attacks.py --device cuda --amp bf16 --batch 64

Honest setup:
- the model is a randomly initialised deit-tiny (real config: 224x224, patch 16, width 192, depth 12) whose head is
  replaced by a nearest-centroid head on the benchmark images (so predictions are spread over 8 classes with
  margins a few PGD steps must overcome; an untouched random head breaks at the first iterate);
- labels = the model's own clean predictions, for BOTH tools, so every sample starts correctly classified (no
  sample is skipped for being clean-misclassified);
- both run PGD-10 with random start, step 2.5*eps/steps, same inputs. Random starts differ (robench: per-sample
  seeds; torchattacks: global RNG), and robench counts a sample broken if ANY iterate is misclassified while
  torchattacks evaluates only the final iterate, so robench's robust accuracy can be slightly lower (stronger).
Reported: both robust accuracies per eps, wall times and their ratio, the rows x steps each tool ran, the
achieved fraction of the fwd+bwd FLOP bound (model FLOPs from torch.utils.flop_counter; bound = measured matmul
FLOP/s of this machine), and how often a sample broken at a smaller eps survived a larger one (why robench does
not use that shortcut).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from robench.attack import AttackSpec, parse_eps, run_attack
from robench.attack.spec import fmt_eps
from robench.zoo.registry import create_model


def centroid_model(x, n_cls=8, scale=5.0, device="cpu"):
    torch.manual_seed(0)
    m = create_model("deit-tiny-standard").to(device)
    with torch.no_grad():
        f = m.net.forward_head(m.net.forward_features(m.normalize(x)), pre_logits=True)
        n_cls = min(n_cls, len(x))
        c = f[:n_cls] - f.mean(0)
        c = c / c.norm(dim=1, keepdim=True)
        m.net.head.weight.zero_()
        m.net.head.bias.fill_(-1e3)
        m.net.head.weight[:n_cls] = c * scale
        m.net.head.bias[:n_cls] = 0
    return m


def images(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 14, 14, generator=g), size=224, mode="bilinear").to(device)


def step_flops(model, x1, amp):
    """FLOPs of one PGD step (forward + backward to the input) for one image."""
    x1 = x1.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(x1.device.type, dtype=amp, enabled=amp is not None):
            loss = model(x1).float().logsumexp(1).sum()
        loss.backward()  # parameters are frozen: only the input gradient is computed
    return fc.get_total_flops()


def matmul_peak(device, dtype, n=1024, reps=10):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eps", default="1/255,2/255,4/255,8/255")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-torchattacks", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    dev = args.device
    eps = parse_eps(args.eps)
    x = images(args.batch, dev)
    model = centroid_model(x, device=dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels = clean predictions: every sample starts correct
    print(f"device {dev}, threads {torch.get_num_threads()}, amp {args.amp}, batch {args.batch}, "
          f"PGD-{args.steps} at eps {', '.join(fmt_eps(e) for e in eps)}; {len(set(y.tolist()))} predicted classes")
    spec = AttackSpec("pgd", "pgd", eps=tuple(eps), steps=args.steps, step_size="2.5*eps/steps", random_start=True)
    seeds = list(range(args.batch))
    run_attack(model, x[:1], y[:1], AttackSpec("pgd", "pgd", eps=(eps[0],), steps=1), seeds[:1], amp_dtype=amp)
    sync(dev)
    t = time.perf_counter()
    res = run_attack(model, x, y, spec, seeds, amp_dtype=amp)
    sync(dev)
    t_rb = time.perf_counter() - t
    rows_rb = res.info["row_grad_steps"]
    fwd_rb = rows_rb + res.info["rows_attacked"] + args.batch  # + final evaluations + clean pass

    flops = step_flops(model, x[:1], amp)
    peak = matmul_peak(dev, amp or torch.float32)
    print(f"model fwd+bwd(input) FLOPs per image-step: {flops / 1e9:.2f} GFLOP; "
          f"matmul bound {peak / 1e9:.0f} GFLOP/s ({'fp32' if amp is None else args.amp})")
    acc_rb = res.robust.float().mean(1).tolist()
    print(f"robench  : {t_rb:7.1f} s, {rows_rb} image-steps (of {args.steps * len(eps) * args.batch} without early "
          f"exit), {flops * fwd_rb / t_rb / 1e9:.1f} GFLOP/s = {flops * fwd_rb / t_rb / peak:.1%} of bound")
    broke_then_held = 0
    for i in range(args.batch):
        r = res.robust[:, i].tolist()
        broke_then_held += sum(1 for a in range(len(r)) for b in range(a + 1, len(r)) if not r[a] and r[b])
    if args.no_torchattacks:
        print("robust acc robench: " + ", ".join(f"{fmt_eps(e)}: {a:.3f}" for e, a in zip(eps, acc_rb)))
        return
    import torchattacks

    acc_ta = []
    sync(dev)
    t = time.perf_counter()
    for e in eps:
        atk = torchattacks.PGD(_amp_model(model, amp), eps=e, alpha=2.5 * e / args.steps, steps=args.steps,
                               random_start=True)
        adv = atk(x, y)
        with torch.no_grad():
            acc_ta.append((model(adv).argmax(1) == y).float().mean().item())
    sync(dev)
    t_ta = time.perf_counter() - t
    rows_ta = args.steps * len(eps) * args.batch
    print(f"torchattacks: {t_ta:7.1f} s, {rows_ta} image-steps, {flops * (rows_ta + len(eps) * args.batch) / t_ta / 1e9:.1f}"
          f" GFLOP/s = {flops * (rows_ta + len(eps) * args.batch) / t_ta / peak:.1%} of bound")
    print("eps        robench  torchattacks")
    for e, a, b in zip(eps, acc_rb, acc_ta):
        print(f"{fmt_eps(e):9s}  {a:7.3f}  {b:12.3f}")
    print(f"speed-up robench vs torchattacks looped over eps: {t_ta / t_rb:.2f}x "
          f"(per image-step: robench {t_rb / max(rows_rb, 1) * 1e3:.1f} ms, torchattacks {t_ta / rows_ta * 1e3:.1f} ms)")
    print(f"(sample, eps_i < eps_j) pairs broken at eps_i but robust at eps_j: {broke_then_held}")


class _amp_model(torch.nn.Module):
    def __init__(self, model, amp):
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model(x).float()


if __name__ == "__main__":
    main()
