"""`robench demo`: the whole tool on the built-in zoo (one tiny ViT per attention variant, trained on real
handwritten digits), on the CPU, with no download: a sweep (clean, 15 CIFAR-style corruptions x 5 severities on
the fly, FGSM and PGD at several L∞ eps, a cheap AutoAttack on a subset, one FMN robustness curve for two of the
models), then a leaderboard and an HTML report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from robench.report.leaderboard import format_leaderboard, leaderboard
from robench.report.render import report
from robench.run.engine import run_plan
from robench.run.plan import ModelEntry, Plan
from robench.zoo.demo import DEMO_VARIANTS, demo_name

QUICK_VARIANTS = ("standard", "quest", "elliptical")
QUICK_CORRUPTIONS = ["gaussian_noise", "defocus_blur", "fog", "contrast", "jpeg_compression"]
IMAGENET_C_15 = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                 "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                 "jpeg_compression"]


def demo_plan(out="results/demo", quick: bool = False, quiet: bool = False) -> Plan:
    """The demo sweep. Default: every demo model; clean accuracy on the 540 test digits; the 15 ImageNet-C
    corruptions (CIFAR-10-C parameters) x 5 severities on the first 64 of them, the attacks on the first 48.
    --quick: 3 models, 200 digits, 5 corruptions x 3 severities, FGSM and PGD-5."""
    variants = QUICK_VARIANTS if quick else DEMO_VARIANTS
    return Plan(
        models=[ModelEntry(demo_name(v)) for v in variants],
        data="digits:test",
        limit=200 if quick else None,  # clean accuracy on all 540 test digits by default
        corruptions=["cifar10-c"],
        corruption_names=QUICK_CORRUPTIONS if quick else IMAGENET_C_15,
        severities=[1, 3, 5] if quick else [1, 2, 3, 4, 5],
        corruption_limit=64,  # corruption cells on 64 of them, attacks on 48 (keeps the demo under a minute)
        attacks=["demo-quick"] if quick else ["demo"],
        attack_limit=48,
        batch_size=128,
        device="cpu",
        seed=0,
        out=str(out),
        quiet=quiet,
        command="robench demo" + (" --quick" if quick else ""),
    )


DEMO_FMN = "fmn:Linf?name=fmn-linf-fast&patience=10&rtol=0.01"  # FMN-100 L∞ with early exit (a few seconds)


def curve_plan(plan: Plan) -> Plan:
    """The demo's robustness curve: FMN-L∞ on the first 24 digits of the first two demo models (a paired comparison
    of their eps* in the report; the CI time budget), in the same store; the clean cells are the demo sweep's."""
    return dataclasses.replace(plan, models=plan.models[:2], corruptions=[], corruption_names=None,
                               attacks=[DEMO_FMN], sanity_probe=False, attack_limit=24)


@dataclass
class DemoOutputs:
    out: Path
    results: object  # tidy results DataFrame
    leaderboard: object  # leaderboard DataFrame
    leaderboard_md: str
    report_html: Path


def run_demo(out="results/demo", quick: bool = False, progress=None, quiet: bool = False,
             baseline_model: str = "demo-standard") -> DemoOutputs:
    """Run the demo sweep, then write leaderboard.csv / leaderboard.md and report.html into `out`."""
    out = Path(out)
    plan = demo_plan(out, quick=quick, quiet=quiet)
    results = run_plan(plan, progress)
    run_plan(curve_plan(plan), progress)  # one more cell per model: the minimum-norm curve (existing cells reused)
    board = leaderboard([out])
    (out / "leaderboard.csv").write_text(format_leaderboard(board, "csv"))
    md = format_leaderboard(board, "md")
    (out / "leaderboard.md").write_text(md)
    html = report([out], out, baseline=baseline_model)
    return DemoOutputs(out, results, board, md, Path(html))
