"""bf16 verdicts confirmed in fp32: robust accuracy of PGD-10 under --precision bf16 vs fp32 on the same samples.

    python benchmarks/bf16.py --model deit-tiny --batch 16      # the attack benchmark's model (random deit-tiny,
                                                               # nearest-centroid head, labels = its predictions)
    python benchmarks/bf16.py --model demo-quest --batch 540    # a demo model on the digits test split

Prints per eps the fp32 and bf16 robust accuracy, their difference in percentage points, and how many
low-precision hits the fp32 re-check rejected (autocast bf16 works on CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from robench.attack import fmt_eps, make_spec, parse_eps, run_attack


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-quest")
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--eps", default="1/255,2/255,4/255,8/255")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eps = parse_eps(args.eps)
    if args.model.startswith("demo-"):
        from robench.data.digits import digits_tensors
        from robench.zoo.registry import create_model

        model = create_model(args.model).eval().to(args.device)
        x, y, _ = digits_tensors("test")
        x, y = x[:args.batch].to(args.device), y[:args.batch].to(args.device)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from attacks import build, centroid_model, images

        name = "deit-tiny-standard" if args.model == "deit-tiny" else args.model
        x = images(args.batch, build(name, args.device)[3], args.device)
        model = centroid_model(name, x, args.device)
        with torch.no_grad():
            y = model(x).argmax(1)
    spec = make_spec("pgd", eps=tuple(eps), steps=args.steps, random_start=True)
    seeds = list(range(len(x)))
    t = time.perf_counter()
    a = run_attack(model, x, y, spec, seeds)
    t32 = time.perf_counter() - t
    t = time.perf_counter()
    b = run_attack(model, x, y, spec, seeds, amp_dtype=torch.bfloat16)
    t16 = time.perf_counter() - t
    print(f"{args.model}, {len(x)} samples, PGD-{args.steps} random start, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); fp32 {t32:.1f} s, bf16 {t16:.1f} s")
    print(f"{'eps':9s} {'fp32 %':>8s} {'bf16 %':>8s} {'diff pp':>8s} {'rejected bf16 hits':>19s}")
    for k, e in enumerate(eps):
        ra, rb = a.robust[k].float().mean().item() * 100, b.robust[k].float().mean().item() * 100
        print(f"{fmt_eps(e):9s} {ra:8.2f} {rb:8.2f} {rb - ra:+8.2f} {b.info['rejected_hits'][k]:19d}")


if __name__ == "__main__":
    main()
