"""Attention diagnostics and the QUEST toy experiment.

- `inspect_model(model, batches)`: per layer/head query-key norms, attention entropy and peakedness, elliptical
  scales and token collapse, as a tidy DataFrame (robench.diag.stats).
- `inspect(model_name, checkpoint, data, limit)`: the same for a registered model on a data spec.
- `toy_experiment(out, ...)`: the QUEST synthetic shortcut task (robench.diag.toy, docs/toy.md).
"""

from __future__ import annotations

from robench.diag.stats import inspect_model, layer_summary


def inspect(model_name: str, checkpoint=None, data: str = "digits", *, limit: int | None = 64,
            batch_size: int = 32, max_tokens: int | None = None, seed: int = 0, device: str = "cpu",
            corruption: str | None = None, severity: int = 3, suite: str = "imagenet-c"):
    """Diagnostics of a registered model (optionally a checkpoint) on `limit` samples of a data spec, clean or
    under one corruption (rendered with the same per-sample seeds as a sweep)."""
    from torch.utils.data import DataLoader

    from robench.data.specs import load_dataset
    from robench.zoo.registry import create_model

    model = create_model(model_name, checkpoint=checkpoint).to(device)
    ds = load_dataset(data, model.info, limit=limit, seed=seed)
    batches = ((x.to(device), y) for x, y, _ in DataLoader(ds.dataset, batch_size=batch_size))
    if corruption is not None:
        from robench.corrupt import corrupt_batch
        from robench.seeding import sample_seeds

        batches = ((corrupt_batch(x.to(device), corruption, severity,
                                  sample_seeds(seed, idx, corruption, severity), suite=suite), y)
                   for x, y, idx in DataLoader(ds.dataset, batch_size=batch_size))
    return inspect_model(model, batches, max_tokens=max_tokens)


def toy_experiment(*args, **kwargs):
    """See robench.diag.toy.toy_experiment."""
    from robench.diag.toy import toy_experiment as run

    return run(*args, **kwargs)


__all__ = ["inspect", "inspect_model", "layer_summary", "toy_experiment"]
