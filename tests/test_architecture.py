"""The layering of robench (pyproject.toml [tool.importlinter]) holds, and no two robench modules import each other
(directly or through others), counting imports inside functions."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter")  # grimp comes with import-linter: both skip cleanly without the dev extra
grimp = pytest.importorskip("grimp")


def test_import_linter_contracts_kept():
    """Layers (no upward import), attack/data independence, no cycle between siblings: import-linter's report names
    the offending import when a contract is broken."""
    cmd = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
           "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"import-linter contracts broken:\n{r.stdout}\n{r.stderr}"
    assert "0 broken" in r.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("robench", cache_dir=None)
    cycles = _cycles(graph)
    shown = []
    for comp in cycles:  # one concrete chain per cycle, each step with its line
        a, b = comp[0], comp[1]
        chain = (graph.find_shortest_chain(importer=a, imported=b)
                 + graph.find_shortest_chain(importer=b, imported=a)[1:])
        steps = []
        for x, y in zip(chain, chain[1:]):
            lines = [d["line_number"] for d in graph.get_import_details(importer=x, imported=y)]
            steps.append(f"{x} -> {y} (l.{','.join(map(str, lines))})")
        shown.append("; ".join(steps))
    assert not cycles, "import cycles in robench:\n" + "\n".join(shown)


def test_cycle_finder_finds_a_cycle():
    """The check above is not vacuous: a graph with a cycle is reported."""
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        g.add_module(m)
    g.add_import(importer="p.a", imported="p.b")
    g.add_import(importer="p.b", imported="p.a")
    g.add_import(importer="p.c", imported="p.a")
    assert _cycles(g) == [["p.a", "p.b"]]
