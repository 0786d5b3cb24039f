"""Suite definitions shipped with robench: the top-level attacks/ and corruptions/ folders of the repository,
installed as robench.suites.attacks / robench.suites.corruptions. A user suite may be given by path instead."""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path

from robench.errors import RobenchError, suggest

KINDS = ("attacks", "corruptions")


def suite_names(kind: str) -> list[str]:
    folder = importlib.resources.files(f"robench.suites.{kind}")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_suite(kind: str, name_or_path: str) -> dict:
    """Parse a shipped suite by name (`pgd`, `imagenet-c`) or a user suite by path (`my/suite.toml`)."""
    assert kind in KINDS, kind
    text, where = None, name_or_path
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise RobenchError(f"{kind[:-1]} suite file not found: {p}")
        text = p.read_text()
    else:
        res = importlib.resources.files(f"robench.suites.{kind}") / f"{name_or_path}.toml"
        if not res.is_file():
            raise RobenchError(f"unknown {kind[:-1]} suite '{name_or_path}'" + suggest(name_or_path, suite_names(kind))
                               + f"; shipped suites: {', '.join(suite_names(kind))}")
        text, where = res.read_text(), f"{name_or_path}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RobenchError(f"{kind[:-1]} suite {where} is not valid TOML: {e}") from None
    data.setdefault("name", p.stem if p.suffix == ".toml" else name_or_path)
    return data
