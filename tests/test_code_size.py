"""Issue 19's size limits hold: no module of robench/ over 400 lines, no function over 60 lines except the PGD inner
loop (robench.attack.pgd.pgd_rows, one fused loop on purpose)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "robench"
EXEMPT = {("attack/pgd.py", "pgd_rows")}


def test_no_module_over_400_lines_no_function_over_60():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50  # the package was found
    long_files, long_functions = [], []
    for f in files:
        text = f.read_text()
        rel = f.relative_to(PACKAGE).as_posix()
        if text.count("\n") > 400:
            long_files.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in EXEMPT:
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)
