"""The former name of the validation pass, kept for callers: robench.run.resolve.resolve checks the whole plan
before any file is written or model built (and returns the ResolvedPlan)."""

from robench.run.checks import check_eps, check_output, eps_limit  # noqa: F401
from robench.run.resolve import resolve as preflight  # noqa: F401
