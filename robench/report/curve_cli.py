"""`robench curve`: its arguments validated (one-line errors, nothing written) and its text."""

from __future__ import annotations

import math

from robench.attack.spec import parse_eps
from robench.errors import RobenchError
from robench.report.curves import curves, eps_star_samples, format_curves, paired_comparison

FORMATS = ("text", "csv", "json")


def run_curve(stores, eps, compare, fmt: str) -> str:
    if fmt not in FORMATS:
        raise RobenchError(f"unknown format '{fmt}'; choose from: {', '.join(FORMATS)}")
    grid = parse_eps(eps) if eps is not None else None
    if compare and len(compare) != 2:
        raise RobenchError(f"--compare takes exactly two models (give it twice), got {len(compare)}")
    df = curves(stores, grid)
    if compare:
        known = set(df.model) if len(df) else set()
        for m in compare:
            if m not in known:
                raise RobenchError(f"--compare: no minimum-norm results for model '{m}'"
                                   + (f" (have: {', '.join(sorted(known))})" if known else ""))
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", indent=1) + "\n"
    text = format_curves(df)
    if compare:
        samples = eps_star_samples(stores)
        for attack in sorted(set(samples.attack)):
            r = paired_comparison(samples, compare[0], compare[1], attack)
            p = "n/a (no difference)" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}"
            text += (f"\n{attack}: {r['model_a']} vs {r['model_b']} on {r['n']} samples both classify correctly: "
                     f"median eps* difference {r['median_diff']:.4g}, larger eps* for {r['model_a']} on "
                     f"{r['a_larger']}, for {r['model_b']} on {r['b_larger']}; Wilcoxon signed-rank p = {p}")
    return text + "\n"
