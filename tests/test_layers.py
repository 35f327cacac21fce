"""The package's layers, read off its source: no import cycle, and imports only go downwards.

Every ``import`` and ``from ... import`` of every module under ``rtdmd/`` counts, including the
ones inside functions (a lazy import still ties two modules together). Edges point to the module
named (``from rtdmd.a.b import c`` is an edge to ``rtdmd.a.b``, or to ``rtdmd.a.b.c`` when that
is a module), not to the packages above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'rtdmd'


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts = parts[:-1]
    return '.'.join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(p): p for p in root.rglob('*.py')}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``path`` (module ``name``) imports anywhere in its body."""
    is_package = path.name == '__init__.py'
    package = name if is_package else name.rpartition('.')[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                stem = '.'.join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ''
            # `from pkg import sub` names the submodule when there is one
            targets = [f'{stem}.{a.name}' if f'{stem}.{a.name}' in known else stem
                       for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules(PACKAGE)
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert _cycles(graph) == [['a', 'b', 'c']]
    assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_relative_and_submodule_imports_resolve(tmp_path: Path) -> None:
    """``from . import x`` and ``from pkg import sub`` name the submodule; names do not."""
    source = 'from . import sweep\nfrom rtdmd.apis import stages as s\nfrom .loading import f\n'
    path = tmp_path / 'pipeline.py'
    path.write_text(source)
    known = {'rtdmd.apis', 'rtdmd.apis.sweep', 'rtdmd.apis.stages', 'rtdmd.apis.loading'}
    assert _imports(path, 'rtdmd.apis.pipeline', known) == {
        'rtdmd.apis.sweep', 'rtdmd.apis.stages', 'rtdmd.apis.loading'}


def test_no_import_cycle_inside_the_package() -> None:
    cycles = _cycles(_graph())
    assert not cycles, f'import cycles: {cycles}'


def test_nothing_below_apis_imports_apis() -> None:
    wrong = sorted(f'{m} -> {t}' for m, targets in _graph().items()
                   if not m.startswith('rtdmd.apis')
                   for t in targets if t.startswith('rtdmd.apis'))
    assert not wrong, f'modules below rtdmd.apis import it: {wrong}'


def test_functional_is_pure_tensor_math() -> None:
    """``rtdmd/functional`` imports nothing of the project outside itself."""
    wrong = sorted(f'{m} -> {t}' for m, targets in _graph().items()
                   if m.startswith('rtdmd.functional') for t in targets
                   if not t.startswith('rtdmd.functional'))
    assert not wrong, wrong


def test_tools_do_not_import_the_tests() -> None:
    offenders = []
    for path in sorted((REPO / 'tools').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f'{path.name}: {n}' for n in names if n.split('.')[0] == 'tests']
    assert not offenders, offenders


def test_no_merge_conflict_markers_are_committed() -> None:
    """A merge resolved in a hurry must not ship its markers (they once reached a package
    ``__init__``)."""
    markers = ('<<<<<<< ', '>>>>>>> ', '=======\n')
    found = []
    for folder in ('rtdmd', 'tools', 'configs', 'tests', 'docs', 'requirements', '.ci'):
        for path in sorted((REPO / folder).rglob('*')):
            if path.suffix not in {'.py', '.md', '.sh', '.txt', '.json', '.toml', ''} or \
                    not path.is_file():
                continue
            lines = path.read_text(encoding='utf-8', errors='replace').splitlines(keepends=True)
            found += [f'{path.relative_to(REPO)}:{n}' for n, line in enumerate(lines, 1)
                      if line.startswith(markers[:2]) or line == markers[2]]
    assert not found, found
