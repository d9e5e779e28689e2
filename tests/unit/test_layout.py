"""The code's layout (issue 27, one concern per room): no import cycle among dae's modules, no module
much over 400 lines, and dae never imports jobs. Static checks over the source (ast): nothing is imported."""

import ast
import os
import warnings

from helpers import REPO

DAE = os.path.join(REPO, "dae")
MAX_LINES = 410  # "no module over about 400 lines"
# Modules over MAX_LINES while they are being split; shrink this list as they are (and never grow it).
# (An entry that is gone or within the limit is reported as a warning, naming it.)
OVERSIZED_FOR_NOW: set[str] = set()


def _modules() -> dict[str, str]:
    """dotted module name -> path, for every .py file under dae/."""
    out = {}
    for d, _, names in os.walk(DAE):
        for n in sorted(names):
            if n.endswith(".py"):
                path = os.path.join(d, n)
                parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: str, modules) -> set[str]:
    """The dae modules ``name`` imports anywhere in its file (top level, in functions, under
    TYPE_CHECKING): ``from X import a`` counts as X.a when that is a module, else as X."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = ".".join(base[:len(base) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(target)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycle_among_dae_modules():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (each a group of modules that import each other, directly or not): " + \
        "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_dae_never_imports_jobs():
    modules = _modules()
    for name, path in modules.items():
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(n == "jobs" or n.startswith("jobs.") for n in names), f"{name} imports {names}"


def test_no_module_over_the_line_limit():
    lengths = {os.path.relpath(p, REPO).replace(os.sep, "/"): sum(1 for _ in open(p)) for p in _modules().values()}
    over = {p: n for p, n in lengths.items() if n > MAX_LINES and p not in OVERSIZED_FOR_NOW}
    assert not over, f"modules over {MAX_LINES} lines (split them by concern): {over}"
    done = sorted(p for p in OVERSIZED_FOR_NOW if lengths.get(p, 0) <= MAX_LINES)
    if done:
        warnings.warn(f"OVERSIZED_FOR_NOW in {__file__} lists modules that are gone or within {MAX_LINES} "
                      f"lines now: remove {', '.join(done)}", stacklevel=1)
