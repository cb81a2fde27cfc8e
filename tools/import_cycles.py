#!/usr/bin/env python3
"""Cycles in the import graph of cnn_cifar's modules, counting every import: at module level, inside a
function and under ``if TYPE_CHECKING`` alike (moving an import there hides a cycle from Python, not from a
reader). Also prints the longest functions and the largest files. Exits 1 if there is a cycle.

    uv run python tools/import_cycles.py
"""
import ast
import pathlib
import sys

PKG = pathlib.Path(__file__).resolve().parents[1] / "src" / "cnn_cifar"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path, name: str, modules: set[str]) -> set[str]:
    """The cnn_cifar modules ``path`` imports (``from .x import y`` names module x.y when that exists)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    files = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}
    # A package's __init__ re-exports its modules; importing the package is importing those.
    graph = {name: imports(path, name, set(files)) for name, path in files.items()}
    found = cycles(graph)
    for comp in found:
        print("cycle:", " <-> ".join(comp))
    funcs = []
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in files.items()), reverse=True)
    print(f"{len(files)} modules, {sum(len(g) for g in graph.values())} imports, {len(found)} cycles")
    print("longest functions:", ", ".join(f"{n} ({k} lines)" for k, n in sorted(funcs, reverse=True)[:5]))
    print("largest files:", ", ".join(f"{n} ({k} lines)" for k, n in sizes[:5]))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
