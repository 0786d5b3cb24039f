"""The cost of a whole robustness curve: one FMN-L∞ run (every eps at once, per-sample eps*) vs PGD-10 at 8 fixed
eps and at 4 fixed eps, on the same model and samples, timed INTERLEAVED (FMN, PGD-8, PGD-4, FMN, ...), medians.

    python benchmarks/curves.py                                  # demo-standard, 64 digits, CPU, 1 thread
    python benchmarks/curves.py --model demo-quest --n 128 --reps 5 --fmn-steps 100,50
    python benchmarks/curves.py --device cuda --n 512

Goal (issue 22): the full curve costs no more than PGD at 4 fixed eps. Each tool runs robench's `run_attack` (clean
pass, gating on clean-correct samples, checks of the returned images; PGD with early exit, FMN without: it keeps
shrinking its norm to the end; "FMN-100 early exit": patience 10, rtol 0.01). Also printed: robust accuracy at the 8 eps from the FMN curve and from PGD.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robench.attack import make_spec, run_attack

EPS8 = tuple(k / 255 for k in (1, 2, 3, 4, 6, 8, 12, 16))
EPS4 = tuple(k / 255 for k in (2, 4, 8, 16))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo-standard")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fmn-steps", default="100", help="comma-separated FMN step counts (each its own tool)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from robench.data.digits import digits_tensors
    from robench.zoo import create_model

    dev = torch.device(a.device)
    model = create_model(a.model).eval().to(dev)
    x, y, _ = digits_tensors("test")
    x, y = x[:a.n].to(dev), y[:a.n].to(dev)
    seeds = list(range(len(y)))
    tools = {f"FMN-{s} Linf (curve)": make_spec("fmn", norm="Linf", steps=int(s)) for s in a.fmn_steps.split(",")}
    tools["FMN-100 early exit"] = make_spec("fmn", norm="Linf", steps=100, patience=10, rtol=0.01)
    tools["PGD-10 at 8 eps"] = make_spec("pgd", eps=EPS8, steps=10, random_start=True)
    tools["PGD-10 at 4 eps"] = make_spec("pgd", eps=EPS4, steps=10, random_start=True)
    times = {k: [] for k in tools}
    out = {}
    for name, spec in tools.items():  # warm-up
        out[name] = run_attack(model, x[:4], y[:4], spec, seeds[:4])
    for _ in range(a.reps):
        for name, spec in tools.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out[name] = run_attack(model, x, y, spec, seeds)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model {a.model}, {a.n} digits, device {a.device}, {a.threads} thread(s), {a.reps} interleaved reps")
    for k, t in med.items():
        print(f"  {k:22s} {t:8.3f} s   x{t / med['PGD-10 at 8 eps']:.2f} of PGD-10 at 8 eps, "
              f"x{t / med['PGD-10 at 4 eps']:.2f} of PGD-10 at 4 eps")
    pgd = out["PGD-10 at 8 eps"].robust.float().mean(1).tolist()
    for k in tools:
        if k.startswith("FMN"):
            e = out[k].eps_star.cpu()
            curve = [float((e > eps).float().mean()) for eps in EPS8]
            print(f"  robust acc at {', '.join(f'{round(e * 255)}/255' for e in EPS8)}:")
            print(f"    {k:20s} " + " ".join(f"{v:6.1%}" for v in curve))
    print(f"    {'PGD-10':20s} " + " ".join(f"{v:6.1%}" for v in pgd))


if __name__ == "__main__":
    main()
