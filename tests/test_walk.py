"""The path from `robench eval --model` to the model's forward stays short (issue 19: at most 20 stops in at most 6
files), measured by tracing a real run, not counted by hand.

A stop is a robench function on the call stack at one of the moments that carry the model: the --model value
becoming a ModelEntry, its source checking it (zoo.sources.check_entry), the model being built
(RobenchModel.__init__) and every forward of the built model (RobenchModel.forward). Functions that return before
those moments (parsers, helpers) are not on the way; comprehension frames are not stops.
`python tests/test_walk.py [robench eval options]` prints the walk (docs/plan.md shows it).
"""

import os
import sys
from pathlib import Path

import robench
from robench.zoo.entry import ModelEntry
from robench.zoo.registry import RobenchModel

PACKAGE = Path(robench.__file__).parent


def walk(argv: list[str]) -> dict[tuple[str, str], None]:
    """Run `robench ARGV` in-process; the stops (file relative to the repository, qualified name), in call order."""
    from robench.cli import main

    stops: dict[tuple[str, str], None] = {}

    def snapshot(frame):
        chain = []
        while frame is not None:
            code = frame.f_code
            if code.co_filename.startswith(str(PACKAGE)) and not code.co_name.startswith("<"):
                name = getattr(code, "co_qualname", code.co_name)  # co_qualname: Python 3.11+
                chain.append((os.path.relpath(code.co_filename, PACKAGE.parent), name))
            frame = frame.f_back
        stops.update(dict.fromkeys(reversed(chain)))

    born = (ModelEntry.__init__.__code__, RobenchModel.__init__.__code__)

    def profile(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if code in born:
            snapshot(frame.f_back)
        elif code is RobenchModel.forward.__code__ or (code.co_name == "check_entry"
                                                        and code.co_filename.startswith(str(PACKAGE))):
            snapshot(frame)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        main(argv)
    except SystemExit as e:
        assert not e.code, f"robench {' '.join(argv)} exited with {e.code}"
    finally:
        sys.setprofile(previous)
    return stops


def test_model_walk_is_at_most_20_stops_in_6_files(tmp_path, capsys):
    stops = walk(["eval", "--model", "demo-quest", "--data", "digits", "--limit", "4", "-q", "--out", str(tmp_path)])
    names = [q for _, q in stops]
    files = dict.fromkeys(f for f, _ in stops)
    shown = "\n".join(f"{f}: {q}" for f, q in stops)
    # the trace saw every moment: the CLI entry, the entry's check, the build and the forward
    for must in ("main", "eval_", "check_entry", "build_model", "create_model", "RobenchModel.forward"):
        assert must in names, f"{must} not on the traced walk:\n{shown}"
    assert len(stops) <= 20 and len(files) <= 6, f"{len(stops)} stops in {len(files)} files:\n{shown}"


if __name__ == "__main__":
    import tempfile

    args = sys.argv[1:] or ["--model", "demo-quest", "--data", "digits", "--limit", "4"]
    found = walk(["eval", *args, "-q", "--out", tempfile.mkdtemp()])
    by_file: dict[str, list[str]] = {}
    for f, q in found:
        by_file.setdefault(f, []).append(q)
    for f, qs in by_file.items():
        print(f"| {f} | {' → '.join(f'`{q}`' for q in qs)} |")
    print(f"{len(found)} stops in {len(by_file)} files")
