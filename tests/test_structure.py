"""The package's shape: which rooms may import which, no import cycles, and a README map that names every module.

Library modules (cur, tuner, models, data, metrics, methods, files, errors, distributed, testing) never import
recipes, reports or the CLI; recipes never import the CLI; reports read results and never import recipes or the
CLI. Any import counts, at the top of a file or deferred inside a function.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "curlora"
ROOMS = ("recipes", "reports", "cli")
FORBIDDEN = {"library": {"recipes", "reports", "cli"}, "recipes": {"cli"}, "reports": {"recipes", "cli"}, "cli": set()}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _room(module: str) -> str:
    if module == "curlora.__main__":  # `python -m curlora` runs the CLI
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "library"


def _imports(module: str, path: Path, nodes) -> list[tuple[str, int]]:
    """The curlora modules that these import statements of `module` name (absolute or relative)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "curlora"]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            if name.split(".")[0] == "curlora":
                # `from curlora.x import y` may import the submodule curlora.x.y
                found += [(name, node.lineno)] + [(f"{name}.{a.name}", node.lineno) for a in node.names]
    return found


def test_rooms_import_only_what_they_may():
    modules = _modules()
    violations = []
    for module, path in modules.items():
        room = _room(module)
        for name, line in _imports(module, path, ast.walk(ast.parse(path.read_text(encoding="utf-8")))):
            if name in modules and _room(name) in FORBIDDEN[room]:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {room} module {module} imports {name}")
    assert not violations, "imports against the package's layering:\n" + "\n".join(violations)


def test_no_import_cycles_at_module_level():
    """Top-level imports form no cycle (deferred imports inside functions do not run at import time). A package
    importing its own submodules, or a module importing the package it lives in, is how packages work."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        body = ast.parse(path.read_text(encoding="utf-8")).body
        deps = {n for n, _ in _imports(module, path, body) if n in modules and n != module}
        graph[module] = {d for d in deps if not d.startswith(module + ".") and not module.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d) :] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_readme_map_names_every_module():
    """The README's development section is the map of the package: every module and folder appears in it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.find("```text\nsrc/curlora/")
    assert start >= 0, "README.md has no package map (a ```text block starting with src/curlora/)"
    block = readme[start : readme.find("```", start + 8)]
    missing = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if path.name == "__init__.py" and rel.parent != Path("."):
            continue  # a package is named by its folder
        # a map entry names a folder ("bench/") and then its files, or a top-level file
        folder_ok = rel.parent == Path(".") or f"{rel.parent.name}/" in block
        if not (folder_ok and path.name in block):
            missing.append(rel.as_posix())
    assert not missing, "modules missing from the README map (README.md, 'Development'): " + ", ".join(missing)
