"""Steady-state throughput of ImageNet-C rendered on the fly for one registry model: clean + 15 corruptions x 5
severities, split into decode / corrupt / model time, and the projection to full ImageNet-C (50 000 images x 75
cells + clean) on the device it ran on.

The pipeline is robench's: every image is decoded and resized once (PIL, the model's eval transform) into a uint8
batch (pinned on CUDA), each cell corrupts the batch on the device (corrupt_batch, backend torch) and feeds the
result straight to the model. Random weights are fine for speed (built with robench.zoo.create_model directly).

    python benchmarks/imagenet_c.py                                  # CPU: deit-tiny-quest, 16 images (~3 min)
    python benchmarks/imagenet_c.py --device cuda --n 2048 --batch-size 256
    python benchmarks/imagenet_c.py --images /data/imagenet/val --n 5000 --model deit-tiny-standard
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from robench.corrupt import corrupt_batch, get_suite
from robench.seeding import sample_seeds

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample" / "val"
FULL = 50_000  # ImageNet val


def image_files(folder: Path) -> list[Path]:
    exts = {".jpeg", ".jpg", ".png"}
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)
    if not files:
        raise SystemExit(f"no images under {folder}")
    return files


def decode(files, transform) -> tuple[torch.Tensor, float]:
    """Decode + resize + crop each file once into (N, 3, H, W) uint8; returns it and the seconds per image."""
    from PIL import Image

    t = time.perf_counter()
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append((transform(im.convert("RGB")) * 255).round().to(torch.uint8))
    return torch.stack(out), (time.perf_counter() - t) / len(files)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit-tiny-quest")
    ap.add_argument("--images", type=Path, default=SHARED, help="image folder (searched recursively)")
    ap.add_argument("--n", type=int, default=None, help="images per cell, the folder repeated (CPU 16, GPU 2048)")
    ap.add_argument("--batch-size", type=int, default=None, help="(CPU 16, GPU 256)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                    help="model autocast (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--corruptions", nargs="*", default=None, help="default: the 15 of ImageNet-C")
    ap.add_argument("--severities", nargs="*", type=int, default=[1, 2, 3, 4, 5])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        import cv2

        cv2.setNumThreads(args.threads)
    dev = torch.device(args.device)
    gpu = dev.type == "cuda"
    n = args.n or (2048 if gpu else 16)
    bs = args.batch_size or (256 if gpu else 16)
    precision = args.precision or ("bf16" if gpu else "fp32")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    sync = torch.cuda.synchronize if gpu else (lambda: None)

    from robench.data.imagenet import EvalTransform
    from robench.zoo import create_model

    model = create_model(args.model).to(dev).eval()  # random weights unless the registry ships a checkpoint
    info = model.info
    transform = EvalTransform(info.input_size[-1], info.crop_pct, info.interpolation)
    files = image_files(args.images)
    files = (files * (n // len(files) + 1))[:n] if len(files) < n else files[:n]
    uniq = sorted(set(files))
    u8, dec_s = decode(uniq, transform)
    pos = {f: i for i, f in enumerate(uniq)}
    data = u8[[pos[f] for f in files]]
    if gpu:
        data = data.pin_memory()

    suite = get_suite("imagenet-c")
    corruptions = args.corruptions or suite.corruptions
    cells = [("clean", 0)] + [(c, s) for c in corruptions for s in args.severities]

    def forward(x):
        ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else torch.no_grad()
        with torch.no_grad(), ctx:
            return model(x).argmax(1)

    def run_cell(c, s, timing):
        for lo in range(0, n, bs):
            t0 = time.perf_counter()
            x = data[lo:lo + bs].to(dev, non_blocking=True).float().div_(255)
            sync()
            t1 = time.perf_counter()
            if c != "clean":
                x = corrupt_batch(x, c, s, sample_seeds(0, range(lo, lo + len(x)), c, s), suite=suite)
                sync()
            t2 = time.perf_counter()
            forward(x)
            sync()
            t3 = time.perf_counter()
            timing["load"] += t1 - t0
            timing["corrupt"] += t2 - t1
            timing["model"] += t3 - t2

    # warm-up: every corruption once on a small batch (kernels, caches, numba, alias tables), the model once
    for c, s in cells:
        x = data[:2].to(dev).float().div_(255)
        if c != "clean":
            corrupt_batch(x, c, s, [0, 1], suite=suite)
    forward(data[:bs].to(dev).float().div_(255))
    sync()

    print(f"# {args.model} ({info.params / 1e6:.1f} M params, {precision}) on {dev} "
          f"({torch.cuda.get_device_name(dev) if gpu else f'{torch.get_num_threads()} torch threads'}), "
          f"torch {torch.__version__}; {n} images per cell ({len(uniq)} distinct from {args.images}), batch {bs}")
    print(f"decode + resize + crop (PIL, once per image): {dec_s * 1e3:.2f} ms/image")
    print(f"{'cell':22s} {'corrupt ms/img':>15s} {'model ms/img':>13s} {'load ms/img':>12s} {'img/s':>8s}")
    per = {}
    t_all = time.perf_counter()
    for c, s in cells:
        timing = {"load": 0.0, "corrupt": 0.0, "model": 0.0}
        run_cell(c, s, timing)
        per[c, s] = timing
        tot = sum(timing.values())
        label = "clean" if c == "clean" else f"{c} s{s}"
        print(f"{label:22s} {timing['corrupt'] / n * 1e3:15.3f} {timing['model'] / n * 1e3:13.3f} "
              f"{timing['load'] / n * 1e3:12.3f} {n / tot:8.1f}", flush=True)
    wall = time.perf_counter() - t_all
    sums = {k: sum(t[k] for t in per.values()) for k in ("load", "corrupt", "model")}
    ncells = len(cells)
    print()
    print(f"{'per corruption (mean over severities)':38s} {'corrupt ms/img':>15s}")
    for c in corruptions:
        v = [per[c, s]["corrupt"] / n * 1e3 for s in args.severities]
        print(f"{c:38s} {statistics.mean(v):15.3f}")
    img_cells = n * ncells
    print()
    print(f"steady state over {ncells} cells x {n} images: {img_cells / wall:.1f} images/s "
          f"(corrupt {sums['corrupt'] / img_cells * 1e3:.3f}, model {sums['model'] / img_cells * 1e3:.3f}, "
          f"load {sums['load'] / img_cells * 1e3:.3f} ms/image)")
    # projection: every one of the 50 000 images decoded once, then each cell loads, corrupts and classifies it
    full_cells = 1 + 15 * 5
    corrupt_per_img = sum(per[c, s]["corrupt"] for c, s in cells if c != "clean") / n  # summed over the cells run
    scale = (15 * 5) / max(1, sum(1 for c, _ in cells if c != "clean"))
    proj = {"decode": FULL * dec_s,
            "load": FULL * full_cells * sums["load"] / img_cells,
            "corrupt": FULL * corrupt_per_img * scale,
            "model": FULL * full_cells * sums["model"] / img_cells}
    total = sum(proj.values())
    print(f"projected full ImageNet-C ({FULL} images x 75 cells + clean) on {dev}: {total / 60:.1f} min "
          f"= decode {proj['decode'] / 60:.1f} + load {proj['load'] / 60:.1f} + corrupt {proj['corrupt'] / 60:.1f} "
          f"+ model {proj['model'] / 60:.1f} min (decode timed in one process; the engine spreads it over its "
          "DataLoader workers)")


if __name__ == "__main__":
    main()
