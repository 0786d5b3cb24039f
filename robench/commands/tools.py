"""`robench models`, `robench convert`, `robench corrupt`: look at models, checkpoints and corruptions before a run.

Each command imports what it runs inside its own body: torch and timm take seconds to import, and `robench models`
must stay fast (robench/cli.py says why)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from robench.commands.output import console
from robench.errors import RobenchError


def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    variant: Optional[str] = typer.Option(None, help="Only this attention variant."),
):
    """List every registered model: name, arch, variant, params, input size, eval crop, normalisation.

    Example: `robench models --variant quest`
    """
    from robench.zoo.catalog import VARIANTS, catalog

    if variant is not None and variant not in VARIANTS:
        from robench.errors import suggest

        raise RobenchError(f"unknown variant '{variant}'" + suggest(variant, VARIANTS)
                           + f"; variants: {', '.join(VARIANTS)}")
    infos = [i for i in catalog() if variant is None or i["variant"] == variant]
    if as_json:
        print(json.dumps(infos, indent=1))
        return
    from rich.table import Table

    t = Table(title=f"robench models ({len(infos)})")
    for col in ("name", "arch", "variant", "params", "input", "crop", "mean", "std"):
        t.add_column(col, justify="right" if col == "params" else "left")
    for i in infos:
        side = i["input_size"][-1]
        crop = f"{i['crop_pct']:g} ({int(side / i['crop_pct'])}->{side})" if i["crop_pct"] < 1 else "none"
        t.add_row(i["name"], i["arch"], i["variant"], f"{i['params'] / 1e6:.2f}M", "x".join(map(str, i["input_size"])),
                  crop, ",".join(f"{m:.3f}" for m in i["mean"]), ",".join(f"{s:.3f}" for s in i["std"]))
    console.print(t)
    console.print("crop: the eval transform on image folders (resize the short side to input/crop, centre-crop to "
                  "input); deit-* use their authors' 0.875 (256->224), vit-* timm's cfg.")
    console.print("Any timm model also works as timm:<name> (e.g. timm:resnet50).")


def convert(
    src: Path = typer.Argument(..., help="Checkpoint to convert (.pth/.pt/.bin/.safetensors)."),
    dst: Path = typer.Argument(..., help="Output .safetensors file."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Validate against this model and record it."),
    key: Optional[str] = typer.Option(None, "--key", help="Entry holding the weights ('model', 'model_ema', ...)."),
    force: bool = typer.Option(False, "--force", help="Overwrite DST if it exists."),
):
    """Write a clean safetensors copy of a checkpoint, with metadata (arch, variant, source hash).

    Example: `robench convert deit_quest.pth deit_quest.safetensors --model deit-tiny-quest`
    """
    from robench.paths import check_file
    from robench.zoo.registry import convert_checkpoint

    check_file(dst, "output checkpoint", overwrite=force)

    meta = convert_checkpoint(src, dst, model=model, key=key)
    console.print(f"wrote {dst} (variant {meta.get('variant')}, arch {meta.get('arch')})")



def corrupt(
    images: Path = typer.Argument(..., help="An image file or a directory of images."),
    out: Path = typer.Option(..., "--out", help="Output directory: OUT/CORRUPTION/SEVERITY/IMAGE.png"),
    suite: str = typer.Option("imagenet-c", help="Corruption suite: imagenet-c, imagenet-c-extra, cifar10-c or a .toml path."),
    corruption: Optional[list[str]] = typer.Option(None, "--corruption", help="Only these corruptions (repeatable)."),
    severity: Optional[list[int]] = typer.Option(None, "--severity", help="Only these severities 1-5 (repeatable)."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Also draw the first image under every corruption x severity to this PNG."),
    seed: int = typer.Option(0, help="Global seed of the corruption noise."),
    backend: str = typer.Option("torch", help="torch (batched) or reference (imagecorruptions)."),
):
    """Render corrupted copies of images to disk, and optionally a grid to look at before trusting a benchmark.

    Example: `robench corrupt photo.jpg --out corrupted/ --corruption fog --corruption snow --grid grid.png`
    """
    from robench.corrupt.render import render
    from robench.paths import check_dir, check_file

    check_dir(out, "output directory")
    if grid is not None:
        check_file(grid, "grid image")
    try:
        written = render(images, out, suite=suite, corruptions=corruption, severities=severity, seed=seed,
                         backend=backend, grid=grid)
    except OSError as e:  # the checks above passed, the file system still refused (full disk, /proc...)
        raise RobenchError(f"cannot write under {out}: {e.strerror or e}"
                           + (f" ({e.filename})" if getattr(e, "filename", None) else "")) from None
    print(f"wrote {len(written) - (1 if grid else 0)} images under {out}" + (f" and the grid {grid}" if grid else ""))
