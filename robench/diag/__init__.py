"""Attention diagnostics and the QUEST toy experiment. This package only hands names on.

- `inspect_model(model, batches)`: per layer/head query-key norms, attention entropy and peakedness, elliptical
  scales and token collapse, as a tidy DataFrame (robench.diag.stats).
- `inspect(model_name, checkpoint, data, limit)`: the same for a registered model on a data spec
  (robench.diag.inspect_data).
- `toy_experiment(out, ...)`: the QUEST synthetic shortcut task (robench.diag.toy, docs/toy.md).
"""

from robench.diag.inspect_data import inspect
from robench.diag.stats import inspect_model, layer_summary
from robench.diag.toy import toy_experiment

__all__ = ["inspect", "inspect_model", "layer_summary", "toy_experiment"]
