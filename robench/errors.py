"""One exception type for every user-facing error: the CLI prints its message on one line and exits 2."""


class RobenchError(Exception):
    """Bad input or an unusable environment. The message is a complete, one-line explanation for the user."""

    exit_code = 2


def suggest(name: str, choices, n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest choices, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""
