"""How tables, labels and messages name things: an eps ('8/255') and a set of weights (a sha prefix long enough to
tell every set of weights of one model apart). Standard library only."""

from __future__ import annotations


def fmt_eps(eps, norm: str | None = "Linf") -> str:
    """An eps for tables, labels and messages: '' for None; under L-inf '4/255' for whole 255ths, a short decimal
    as is ('0.3'), '0.5/255' for eighths of 1/255, else 4 significant digits; under any other norm the number
    ('0.5', '1')."""
    if eps is None:
        return ""
    e = float(eps)
    text = f"{e:g}"
    if e == float("inf"):  # a minimum-norm attack's one cell (robench.attack.fmn): unbounded eps
        return "inf"
    if norm != "Linf":
        return text
    k = e * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    if len(text) <= 6:
        return text
    if abs(8 * k - round(8 * k)) < 1e-6:
        return f"{round(8 * k) / 8:g}/255"
    return f"{e:.4g}"


def weights_tags(shas) -> dict:
    """{sha: short tag}, distinct for distinct shas: 'random-init' (with its seed when several), else the first 8
    hex digits of the sha after any 'kind:' prefix ('weights:9f3a...' -> '9f3a...'), lengthened until unique; shas
    that still agree (differing only in their prefix) get '-2', '-3'."""
    shas = [str(s) for s in dict.fromkeys(shas)]

    def body(sha: str) -> str:
        return sha.rsplit(":", 1)[-1]

    random = [s for s in shas if s.startswith("random-init")]
    tags = {s: ("random-init" if len(random) == 1 else s) for s in random}
    rest = [s for s in shas if s not in tags]
    for width in (8, 12, 16, 24, 64, None):
        cut = {s: (body(s)[:width] or "none") for s in rest}
        if len(set(cut.values())) == len(rest) or width is None:
            break
    seen: dict = {}
    for s in rest:
        t = cut[s]
        seen[t] = seen.get(t, 0) + 1
        tags[s] = t if seen[t] == 1 else f"{t}-{seen[t]}"
    return tags
