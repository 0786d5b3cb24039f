"""The cost of recording the final prediction's confidence in attack cells (issue 24). FGSM/PGD take it from the
logits that gave each prediction; before, the core ran one more no-grad forward of every eps's final images.
Three modes of the same run_attack call, timed INTERLEAVED (so the machine's load hits all alike), medians:

    own        as shipped: the confidence from FGSM/PGD's own logits
    forward    the kind's confidence dropped, so the core runs its extra forward (the behaviour before)
    none       no confidence at all (the kind's dropped and the core's forward switched off): the floor

    python benchmarks/confidence.py                       # demo-quest on 128 digits, FGSM and PGD-10, CPU
    python benchmarks/confidence.py --reps 7 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from robench.attack import core, make_spec, run_attack
from robench.data.formats import load_clean
from robench.zoo.registry import create_model


def _dropping_confidence(kind):
    def fused(*args, **kwargs):
        res = kind.fused(*args, **kwargs)
        res.adv_conf = res.adv_nll = None
        return res

    return dataclasses.replace(kind, fused=fused)


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
    get_kind, final = core.get_kind, core._final_confidence
    modes = {"own": (get_kind, final), "forward": (lambda n: _dropping_confidence(get_kind(n)), final),
             "none": (lambda n: _dropping_confidence(get_kind(n)), lambda *args: None)}
    for name in ("fgsm", "pgd"):
        spec = make_spec(name, eps=(4 / 255,), **({"steps": 10} if name == "pgd" else {}))
        times = {m: [] for m in modes}
        try:
            for rep in range(a.reps + 1):
                for mode, (kinds, conf) in modes.items():
                    core.get_kind, core._final_confidence = kinds, conf
                    t0 = time.perf_counter()
                    run_attack(model, x, y, spec, seeds)
                    if rep:  # the first round warms up
                        times[mode].append(time.perf_counter() - t0)
        finally:
            core.get_kind, core._final_confidence = get_kind, final
        med = {m: statistics.median(t) for m, t in times.items()}
        print(f"{name}: own {med['own'] * 1e3:.1f} ms, core forward {med['forward'] * 1e3:.1f} ms, none "
              f"{med['none'] * 1e3:.1f} ms; own/none {med['own'] / med['none']:.3f}, forward/none "
              f"{med['forward'] / med['none']:.3f}, forward/own {med['forward'] / med['own']:.3f} "
              f"({a.batch} samples, {a.reps} reps, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
