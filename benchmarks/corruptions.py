"""Corruption throughput at 224x224: robench's torch backend vs imagecorruptions-imaug (the reference).

The reference runs one image per call in a process pool with --workers processes (default: one per CPU core; started
and warmed up before timing; its times include sending the images to the workers and back); the torch backend
corrupts the whole batch at once on --device (on the CPU, pixelate / jpeg / defocus / the Gaussian filters call PIL
or OpenCV per image unless --device-paths). Each cell times both alternately, --repeat times, and reports medians. Same images (real photos:
scikit-image samples, plus ../shared ImageNet samples when present), same corruption, severity and seeds.

    python benchmarks/corruptions.py                       # all 19 corruptions x 5 severities, 32 images
    python benchmarks/corruptions.py --threads 1 --workers 1 --n 16   # the CPU done-when of issue 14
    python benchmarks/corruptions.py --severities 3 --n 64 --corruptions glass_blur zoom_blur
    python benchmarks/corruptions.py --fidelity --n 8     # mean |torch - reference| per corruption x severity
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robench.corrupt import CORRUPTIONS, corrupt_batch
from robench.corrupt import apply
from robench.corrupt.ops import device_paths
from robench.corrupt.randomness import Replay
from robench.corrupt.reference import REPLAYABLE, corrupt_one, corrupt_reference, get_pool, reference_with_draws
from robench.seeding import sample_seeds

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample" / "val"


def photos(n: int, size: int = 224) -> torch.Tensor:
    imgs = []
    if SHARED.is_dir():
        imgs = [Image.open(p).convert("RGB") for p in sorted(SHARED.glob("*/*.JPEG"))[:n]]
    if len(imgs) < n:
        import skimage.data as sd

        for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "retina"):
            imgs.append(Image.fromarray(getattr(sd, name)()).convert("RGB"))
    imgs = [im.resize((size, size), Image.BILINEAR) for im in imgs]
    imgs = (imgs * (n // len(imgs) + 1))[:n]
    return torch.as_tensor(np.stack([np.asarray(i) for i in imgs])).permute(0, 3, 1, 2).contiguous().float() / 255


def timed_pair(f_torch, f_ref, repeat: int):
    """Median seconds of each, the two interleaved run by run (so a burst of load on a shared machine hits both)."""
    tt, tr = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        f_torch()
        tt.append(time.perf_counter() - t)
        if f_ref is not None:
            t = time.perf_counter()
            f_ref()
            tr.append(time.perf_counter() - t)
    return statistics.median(tt), (statistics.median(tr) if tr else float("nan"))


def fidelity(x: torch.Tensor, corruptions, severities):
    """Mean |torch - reference| in 1/255 per cell: with the reference's noise injected for the stochastic
    corruptions it allows; for frost and elastic_transform (where the reference departs from hendrycks' original)
    the residual (corrupted - clean) statistics of both, with independent noise."""
    imgs = [a for a in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()]
    seeds = list(range(len(imgs)))
    print(f"# fidelity on {len(imgs)} photos 224x224: mean |torch - imagecorruptions| (1/255 units)")
    for c in corruptions:
        cells = []
        for s in severities:
            if c in ("frost", "elastic_transform"):
                ours = apply(x, c, s, sample_seeds(0, seeds, c, s))
                ref = torch.as_tensor(np.stack([corrupt_one(i, c, s, k) for k, i in zip(seeds, imgs)]))
                ref = ref.permute(0, 3, 1, 2).float() / 255
                st = [((y - x) * 255) for y in (ours, ref)]
                cells.append("resid mean {:.1f}/{:.1f} std {:.1f}/{:.1f} |.| {:.1f}/{:.1f}".format(
                    st[0].mean(), st[1].mean(), st[0].std(), st[1].std(), st[0].abs().mean(), st[1].abs().mean()))
                continue
            if c in REPLAYABLE:
                outs, draws = reference_with_draws(imgs, c, s, seeds)
                y = apply(x, c, s, Replay(draws))
            else:
                outs = [corrupt_one(i, c, s, k) for k, i in zip(seeds, imgs)]
                y = apply(x, c, s, seeds)
            ref = torch.as_tensor(np.stack(outs)).permute(0, 3, 1, 2).float() / 255
            cells.append(f"{(y - ref).abs().mean().item() * 255:.3f}")
        print(f"{c:18s} " + (" | ".join(cells)), flush=True)


def jpeg_fidelity(x: torch.Tensor):
    """The torch JPEG (robench/corrupt/jpeg.py, the device path) against PIL at the ImageNet-C and CIFAR-10-C
    qualities, at 224x224 and on the same photos downscaled to 32x32."""
    import io

    from robench.corrupt.jpeg import jpeg

    def pil(a, q):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=q)
        return np.asarray(Image.open(buf).convert("RGB"))

    print(f"# torch JPEG vs PIL {Image.__version__} (libjpeg-turbo), {len(x)} photos: mean |delta| in 1/255, share of "
          "pixel values that differ, max |delta|")
    for size in (224, 32):
        xs = x if size == x.shape[-1] else torch.nn.functional.interpolate(x, size=(size, size), mode="area")
        xs = (xs * 255).round() / 255
        u8 = (xs * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for q in (25, 18, 15, 10, 7, 80, 65, 58, 50, 40):
            ref = torch.as_tensor(np.stack([pil(a, q) for a in u8])).permute(0, 3, 1, 2).float()
            d = (jpeg(xs, q).float() - ref).abs()
            print(f"{size:3d}px q={q:3d}  {d.mean().item():.3f}  {(d > 0).float().mean().item():6.1%}  "
                  f"{d.max().item():.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="images per cell (one torch batch)")
    ap.add_argument("--corruptions", nargs="*", default=list(CORRUPTIONS))
    ap.add_argument("--severities", nargs="*", type=int, default=[1, 2, 3, 4, 5])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workers", type=int, default=os.cpu_count(), help="reference worker processes")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=3, help="median of this many interleaved runs per cell")
    ap.add_argument("--device-paths", action="store_true",
                    help="time the torch device code on the CPU too (where the CPU runs PIL / OpenCV by default)")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--fidelity", action="store_true", help="print fidelity figures instead of speed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        import cv2

        cv2.setNumThreads(args.threads)  # robench's OpenCV calls (CPU paths) get the same thread budget

    x = photos(args.n).to(args.device)
    if args.fidelity:
        with device_paths() if args.device_paths else contextlib.nullcontext():
            fidelity(x.cpu(), args.corruptions, args.severities)
        if "jpeg_compression" in args.corruptions:
            jpeg_fidelity(x.cpu())
        return
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    paths = "device paths forced" if args.device_paths else "CPU library paths where they exist"
    print(f"# median of {args.repeat} interleaved runs; {args.n} images 224x224, torch on {args.device} "
          f"({torch.get_num_threads()} threads, {paths}), reference: imagecorruptions in {args.workers} processes")
    if not args.no_reference:
        get_pool(args.workers)
        corrupt_reference(x[:args.workers].cpu(), "brightness", 1, list(range(args.workers)), args.workers)
    print(f"{'corruption':18s} {'sev':>3s} {'torch img/s':>12s} {'ref img/s':>10s} {'ratio':>7s}")
    tot_t, tot_r, rows = 0.0, 0.0, {}
    ctx = device_paths() if args.device_paths else contextlib.nullcontext()
    with ctx:
        for c in args.corruptions:
            for s in args.severities:
                seeds = sample_seeds(0, range(args.n), c, s)
                corrupt_batch(x[:2], c, s, seeds[:2])  # warm-up (kernels, caches, numba)
                if not args.no_reference:  # the first reference call compiles numba in the worker (glass blur)
                    corrupt_reference(x[:1].cpu(), c, s, seeds[:1], args.workers)

                def run_torch():
                    corrupt_batch(x, c, s, seeds)
                    sync()
                run_ref = None if args.no_reference else (
                    lambda: corrupt_reference(x.cpu(), c, s, seeds, args.workers))
                t, r = timed_pair(run_torch, run_ref, args.repeat)
                tot_t, tot_r = tot_t + t, tot_r + r
                rows.setdefault(c, []).append((t, r))
                flag = "  < 1: SLOWER THAN THE REFERENCE" if r / t < 1 else ""
                print(f"{c:18s} {s:3d} {args.n / t:12.1f} {args.n / r:10.1f} {r / t:6.2f}x{flag}", flush=True)
    print()
    print(f"{'corruption':18s} {'torch img/s':>12s} {'ref img/s':>10s} {'ratio':>7s} {'min sev':>8s}"
          "   (all severities; min sev = the lowest per-severity ratio)")
    slow = []
    for c, v in rows.items():
        t, r = sum(a for a, _ in v), sum(b for _, b in v)
        n = args.n * len(v)
        lo = min(b / a for a, b in v)
        if lo < 1:
            slow.append(c)
        print(f"{c:18s} {n / t:12.1f} {n / r:10.1f} {r / t:6.2f}x {lo:7.2f}x")
    n = args.n * sum(len(v) for v in rows.values())
    print(f"{'overall':18s} {n / tot_t:12.1f} {n / tot_r:10.1f} {tot_r / tot_t:6.2f}x")
    if not args.no_reference:
        print("slower than the reference at some severity: " + (", ".join(slow) if slow else "none"))


if __name__ == "__main__":
    main()
