"""The layout's contracts: no import cycles, argparse only in the CLI, a cheap and complete public API.

These read the source (``ast``) or import in a fresh interpreter; none needs ../shared.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "facial_search"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(path: Path, name: str, is_package: bool) -> set[str]:
    """facial_search modules imported when ``name`` is imported: the module body's imports, not those inside
    functions or under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("facial_search"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.startswith("facial_search"):
                    out.add(mod)
                    out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import submodule`

    visit(tree.body)
    return out


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports at import time}`` over the facial_search package (explicit imports; a
    package that imports its own submodules is no cycle: Python runs the package first)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = {d for d in _top_level_imports(path, name, path.name == "__init__.py") if d in mods}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := dfs(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := dfs(n)):
            return c
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) >= 30 and "facial_search.pipeline" in graph
    # the pipeline <-> workers cycle of the flat layout, gone: the pool imports the pipeline, not the reverse
    assert "facial_search.parallel" not in graph["facial_search.pipeline"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_argparse_only_in_the_cli():
    offenders = []
    for name, path in _modules().items():
        if name == "facial_search.cli" or name.startswith("facial_search.cli."):
            continue
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                offenders.append(name)
            elif isinstance(node, ast.ImportFrom) and node.module == "argparse":
                offenders.append(name)
        if "Namespace" in text:
            offenders.append(f"{name} (mentions Namespace)")
    assert offenders == []


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_is_cheap_and_the_public_api_resolves():
    code = (
        "import sys, facial_search as f\n"
        "assert 'mediapipe' not in sys.modules and 'onnxruntime' not in sys.modules, 'import loaded the models'\n"
        "missing = [n for n in f.__all__ if getattr(f, n, None) is None]\n"
        "assert not missing, missing\n"
        "undocumented = [n for n in f.__all__ if n != '__version__' and not (getattr(f, n).__doc__ or '').strip()]\n"
        "assert not undocumented, undocumented\n"
        "print(len(f.__all__))\n"
    )
    r = _run(code)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 20
    assert r.stderr == ""


@pytest.mark.parametrize("name", ["FacialSearch", "Face", "MemeIndex", "FacialSearchError", "build_index"])
def test_readme_names_are_exported(name):
    import facial_search

    assert name in facial_search.__all__
    assert getattr(facial_search, name).__module__.startswith("facial_search.")


def test_unknown_attribute_is_an_attribute_error():
    import facial_search

    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        facial_search.NoSuchThing  # noqa: B018


def test_every_user_error_derives_from_the_base():
    import inspect

    from facial_search import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)]
    assert len(classes) >= 15
    assert all(issubclass(c, errors.FacialSearchError) for c in classes)
    # every image error says which skip reason it is
    for c in classes:
        if issubclass(c, errors.ImageError):
            assert isinstance(c.skip_reason, errors.SkipReason)
    assert errors.SkipReason.parse("unreadable: truncated JPEG") is errors.SkipReason.UNREADABLE
    assert errors.SkipReason.parse("something else") is None
