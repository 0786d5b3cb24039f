"""Suite files: the names of the shipped suites, telling a suite path from a name, reading and parsing a suite's
TOML (shipped or a user's path)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from robench.errors import RobenchError, suggest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

KINDS = ("attacks", "corruptions")


def suite_names(kind: str) -> list[str]:
    folder = importlib.resources.files(f"robench.suites.{kind}")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def is_suite_path(name_or_path) -> bool:
    """A user suite given by path (a .toml name or an existing file), not a shipped suite's name."""
    p = Path(name_or_path)
    return p.suffix == ".toml" or p.exists()


def read_suite(kind: str, name_or_path) -> tuple[str, str]:
    """(TOML text, where) of a shipped suite by name (`pgd`, `imagenet-c`; where = `imagenet-c.toml`) or of a user
    suite by path (where = the path as given)."""
    assert kind in KINDS, kind
    name_or_path = str(name_or_path)
    if is_suite_path(name_or_path):
        p = Path(name_or_path)
        if not p.is_file():
            raise RobenchError(f"{kind[:-1]} suite file not found: {p}")
        try:
            return p.read_text(encoding="utf-8"), name_or_path
        except (OSError, UnicodeDecodeError) as e:
            raise RobenchError(f"cannot read {kind[:-1]} suite {p} ({type(e).__name__}: {e})") from None
    res = importlib.resources.files(f"robench.suites.{kind}") / f"{name_or_path}.toml"
    if not res.is_file():
        raise RobenchError(f"unknown {kind[:-1]} suite '{name_or_path}'" + suggest(name_or_path, suite_names(kind))
                           + f"; shipped suites: {', '.join(suite_names(kind))}")
    return res.read_text(encoding="utf-8"), f"{name_or_path}.toml"


def parse_suite(kind: str, text: str, where: str) -> dict:
    """The suite's TOML as a dict; `name` defaults to the file's stem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RobenchError(f"{kind[:-1]} suite {where} is not valid TOML: {e}") from None
    data.setdefault("name", Path(where).stem)
    return data


def load_suite(kind: str, name_or_path) -> dict:
    """Parse a shipped suite by name (`pgd`, `imagenet-c`) or a user suite by path (`my/suite.toml`)."""
    text, where = read_suite(kind, name_or_path)
    return parse_suite(kind, text, where)
