"""Components never import entry points, so each can be used and tested alone."""

import ast
from importlib.util import resolve_name
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "softprompt"
ENTRY_POINTS = {"train", "cli", "studies", "serve"}
COMPONENTS = ["prompt", "prompt_io", "model", "tasks", "data", "evaluate", "pretrain", "interop", "config", "errors", "files"]


def imported_modules(path: Path) -> set[str]:
    """Top-level softprompt modules named by `path`'s imports, relative ones resolved."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = ".".join(parts if parts[-1] == "__init__" else parts[:-1]).removesuffix(".__init__")
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module or ""
            modules += [base] if node.module else [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules += [a.name for a in node.names]
    return {m.split(".")[1] for m in modules if m.startswith("softprompt.")}


def component_files():
    for name in COMPONENTS:
        module = PACKAGE / f"{name}.py"
        yield from ([module] if module.exists() else sorted((PACKAGE / name).rglob("*.py")))


def test_components_do_not_import_entry_points():
    offenders = {str(f.relative_to(PACKAGE)): sorted(imported_modules(f) & ENTRY_POINTS) for f in component_files()}
    assert not {f: m for f, m in offenders.items() if m}


def test_the_checker_sees_relative_imports():
    assert "train" in imported_modules(PACKAGE / "cli.py")
