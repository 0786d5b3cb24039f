"""The cost of recording the final prediction's confidence in attack cells (issue 24): run_attack as it is vs the
same call with the core's extra confidence forward switched off (the behaviour before), timed INTERLEAVED (with,
without, with, ...) so the machine's load hits both alike; medians and their ratio printed.

    python benchmarks/confidence.py                       # demo-quest on 128 digits, FGSM and PGD-10, CPU
    python benchmarks/confidence.py --reps 7 --threads 1

For fused kinds (FGSM, PGD) the core runs one no-grad forward of each eps's final images; a kind that fills
AttackResult.adv_conf from its own final logits avoids it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robench.attack import core, make_spec, run_attack
from robench.data.formats import load_clean
from robench.zoo.registry import create_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo-quest")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = create_model(a.model).eval()
    data = load_clean("digits:test", model.info, limit=a.batch)
    x = torch.stack([data.dataset[i][0] for i in range(len(data))])
    y = torch.tensor([data.dataset[i][1] for i in range(len(data))])
    seeds = list(range(len(y)))
    original = core._final_confidence
    for name in ("fgsm", "pgd"):
        spec = make_spec(name, eps=(4 / 255,), **({"steps": 10} if name == "pgd" else {}))
        times = {"with": [], "without": []}
        for rep in range(a.reps + 1):
            for mode in ("with", "without"):
                core._final_confidence = original if mode == "with" else (lambda *args: None)
                t0 = time.perf_counter()
                run_attack(model, x, y, spec, seeds)
                if rep:  # the first round warms up
                    times[mode].append(time.perf_counter() - t0)
        core._final_confidence = original
        w, wo = statistics.median(times["with"]), statistics.median(times["without"])
        print(f"{name}: with confidence {w * 1e3:.1f} ms, without {wo * 1e3:.1f} ms, ratio {w / wo:.3f} "
              f"({a.batch} samples, {a.reps} reps, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
