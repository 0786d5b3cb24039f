"""Confidence under shift: calibration metrics on the per-sample confidences the store records, and ImageNet-O
out-of-distribution detection.

- `ece`: expected calibration error, 15 equal-width bins over [0, 1] (Guo et al. 2017; a sample of confidence c
  falls in bin floor(15 c), c = 1 in a bin of its own, as torchmetrics' CalibrationError, norm="l1");
- `rms_calib`: RMS calibration error with adaptive bins (Hendrycks et al., "Natural Adversarial Examples";
  `calib_err(p='2', beta=100)` of their calibration_tools.py: samples sorted by confidence, bins of 100, the last
  bin taking the remainder). Two deliberate departures from that code, which (1) leaves out its last bin
  (`range(len(bins) - 1)`) and (2) fails below 100 samples: every bin counts, and under 100 samples there is one bin;
- `aurra`: area under the response-rate / accuracy curve (their `aurra`: samples by decreasing confidence, the
  accuracy of the k most confident, averaged over k; ties in numpy's argsort order, as theirs);
- `nll`: mean negative log-likelihood of the true class (recorded where logits were available);
- `aupr`: ImageNet-O detection, average precision with the OOD images as the positive class and the anomaly score
  -max softmax (scikit-learn's average_precision_score definition: tied scores form one threshold).

Confidences, correctness: 1-D arrays of equal length; every function returns NaN on no samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

N_BINS = 15
BETA = 100  # Hendrycks' adaptive bin size
METRICS = ("ece", "rms_calib", "aurra", "nll")


def _arrays(conf, correct):
    conf = np.asarray(conf, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != correct.shape:
        raise ValueError(f"{conf.size} confidences for {correct.size} outcomes")
    return conf, correct


def bin_index(conf, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bin of each confidence: edges linspace(0, 1, n_bins + 1) (float32, as torchmetrics), a value on
    an edge goes to the bin above it; 1.0 to bin n_bins."""
    edges = np.linspace(0, 1, n_bins + 1, dtype=np.float32).astype(np.float64)
    return np.searchsorted(edges, np.asarray(conf, dtype=np.float64), side="right") - 1


def reliability(conf, correct, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per equal-width bin (0..n_bins): n, mean confidence, accuracy (NaN where empty) — the reliability diagram."""
    conf, correct = _arrays(conf, correct)
    idx = bin_index(conf, n_bins)
    n = np.bincount(idx, minlength=n_bins + 1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.bincount(idx, weights=conf, minlength=n_bins + 1) / n
        a = np.bincount(idx, weights=correct, minlength=n_bins + 1) / n
    return pd.DataFrame({"bin": np.arange(n_bins + 1), "lo": np.minimum(np.arange(n_bins + 1) / n_bins, 1.0),
                         "n": n, "confidence": c, "accuracy": a})


def ece(conf, correct, n_bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of |accuracy - mean confidence| x (share of samples)."""
    conf, correct = _arrays(conf, correct)
    if conf.size == 0:
        return float("nan")
    r = reliability(conf, correct, n_bins)
    r = r[r["n"] > 0]
    return float((np.abs(r["accuracy"] - r["confidence"]) * r["n"]).sum() / conf.size)


def rms_calib(conf, correct, beta: int = BETA) -> float:
    """RMS calibration error over adaptive bins of `beta` samples sorted by confidence (the last bin takes the
    remainder; under beta samples one bin)."""
    conf, correct = _arrays(conf, correct)
    n = conf.size
    if n == 0:
        return float("nan")
    order = np.argsort(conf)
    conf, correct = conf[order], correct[order]
    starts = list(range(0, max(n // beta, 1) * beta, beta))
    ends = starts[1:] + [n]
    err = sum((e - s) / n * (conf[s:e].mean() - correct[s:e].mean()) ** 2 for s, e in zip(starts, ends))
    return float(np.sqrt(err))


def aurra(conf, correct) -> float:
    """Area under the response rate / accuracy curve."""
    conf, correct = _arrays(conf, correct)
    if conf.size == 0:
        return float("nan")
    ranks = np.argsort(conf)[::-1]
    curve = np.cumsum(correct[ranks]) / np.arange(1, conf.size + 1)
    return float(np.mean(curve))


def nll(nlls) -> float:
    v = np.asarray(nlls, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def aupr(in_conf, ood_conf) -> float:
    """Average precision of detecting the OOD samples (positives) by the anomaly score -confidence (MSP)."""
    score = -np.concatenate([np.asarray(ood_conf, float), np.asarray(in_conf, float)])
    pos = np.concatenate([np.ones(len(ood_conf)), np.zeros(len(in_conf))])
    if pos.sum() == 0 or len(in_conf) == 0:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    score, pos = score[order], pos[order]
    last = np.r_[np.nonzero(np.diff(score))[0], score.size - 1]  # the last index of each distinct score
    tp = np.cumsum(pos)[last]
    precision, recall = tp / (last + 1), tp / pos.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def metrics(conf, correct, nlls=None) -> dict:
    """Every calibration metric of one set of samples."""
    return {"ece": ece(conf, correct), "rms_calib": rms_calib(conf, correct), "aurra": aurra(conf, correct),
            "nll": nll(nlls) if nlls is not None else float("nan")}


def bootstrap_ci(conf, correct, metric: str = "ece", n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Percentile bootstrap interval of a calibration metric (resampling samples with replacement)."""
    conf, correct = _arrays(conf, correct)
    if conf.size == 0:
        return float("nan"), float("nan")
    fn = {"ece": ece, "rms_calib": rms_calib, "aurra": aurra}[metric]
    rng = np.random.default_rng(seed)
    vals = [fn(conf[i], correct[i]) for i in rng.integers(0, conf.size, size=(n_boot, conf.size))]
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def confidences(store) -> pd.DataFrame:
    """Per done cell x sample of a store with a recorded confidence: cell_id, sample, correct, confidence, nll
    (empty for a store written before confidences were recorded)."""
    return store.query(f"SELECT o.cell_id, o.sample, o.correct, {store.outcome_extras_sql('o.')} FROM outcomes o "
                     "JOIN cells c USING(cell_id) WHERE c.status='done' AND c.threat != 'diagnostics' "
                     "ORDER BY o.cell_id, o.sample").dropna(subset=["confidence"]).reset_index(drop=True)


def cell_metrics(store) -> pd.DataFrame:
    """Per done cell with confidences: cell_id, n, ece, rms_calib, aurra, nll."""
    df = confidences(store)
    rows = [{"cell_id": cid, "n": len(g), **metrics(g["confidence"], g["correct"], g["nll"])}
            for cid, g in df.groupby("cell_id", sort=True)]
    return pd.DataFrame(rows, columns=["cell_id", "n", *METRICS])


def imagenet_o_aupr(store) -> dict[int, float]:
    """{cell_id: AUPR} of the done clean cells of imagenet-o data (ImageNet-O samples positive, anomaly score
    -confidence), from the recorded confidences and the sample ids that tell the two sides apart."""
    import json

    from robench.data.imagenet_o import is_ood

    cells = store.query("SELECT cell_id, params_json FROM cells WHERE status='done' AND dataset='imagenet-o' "
                      "AND threat='clean'")
    if cells.empty or not store.has_table("sample_ids"):
        return {}
    conf = confidences(store)
    out = {}
    for cid, pj in zip(cells["cell_id"], cells["params_json"]):
        fp = str(json.loads(pj or "{}").get("data_fingerprint", ""))
        ids = store.query("SELECT sample, sample_id FROM sample_ids WHERE data_fingerprint=?", (fp,))
        c = conf[conf["cell_id"] == cid].merge(ids, on="sample")
        if c.empty:
            continue
        ood = np.array(is_ood(c["sample_id"]))
        out[int(cid)] = aupr(c.loc[~ood, "confidence"].to_numpy(), c.loc[ood, "confidence"].to_numpy())
    return out


def results_metrics(res) -> dict[tuple[int, int], dict]:
    """{(store index, cell_id): {n, ece, rms_calib, aurra, nll[, aupr]}} over a Results' stores (cells without
    recorded confidences are absent)."""
    out = {}
    for i, s in enumerate(getattr(res, "stores", [])):
        for r in cell_metrics(s).to_dict("records"):
            out[(i, int(r.pop("cell_id")))] = r
        for cid, v in imagenet_o_aupr(s).items():
            out.setdefault((i, cid), {})["aupr"] = v
    return out


def corruption_mean(per_cell: list[tuple[str, float]]) -> float:
    """Mean over corruptions of each corruption's mean over its severities (as corruptions_acc)."""
    by: dict[str, list[float]] = {}
    for corruption, v in per_cell:
        by.setdefault(corruption, []).append(v)
    means = [float(np.mean(v)) for v in by.values()]
    return float(np.mean(means)) if means else float("nan")
