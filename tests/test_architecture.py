"""The architecture's rules that import-linter's contracts do not state (pyproject.toml has
those; `make test` runs `lint-imports`): no module of the package is in an import circle,
typing-only imports included (a circle through `TYPE_CHECKING` is still two modules that
cannot be understood one without the other), and no module grows past the size a newcomer
reads in one sitting."""

from __future__ import annotations

from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent / "proxy"


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_circle_finder_finds_circles() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert import_circles(g) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_in_an_import_circle() -> None:
    g = grimp.build_graph("proxy", include_external_packages=False)
    graph = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert import_circles(graph) == []


def test_no_module_is_over_the_size_limit() -> None:
    """~500 lines; the ones still over it are listed with their size so they only shrink."""
    over = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert over == {k: v for k, v in over.items() if v <= KNOWN_LARGE.get(k, 0)}, over


# Still over the limit; may only shrink (issue 23).
KNOWN_LARGE: dict[str, int] = {}
