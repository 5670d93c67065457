"""Components never import entry points, so each can be used and tested alone.

The components are found, not listed: every module or package of softprompt that is not an entry point.
"""

import ast
from importlib.util import resolve_name
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "softprompt"
ENTRY_POINTS = {"train", "cli", "studies", "server", "__main__"}


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


def component_files() -> list[Path]:
    """Every .py file of the package outside the entry points (modules and whole subpackages)."""
    files = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top not in ENTRY_POINTS:
            files.append(path)
    return files


def test_components_do_not_import_entry_points():
    files = component_files()
    assert len(files) > 20 and any("backbones" in str(f) for f in files), "the finder sees the whole package"
    offenders = {str(f.relative_to(PACKAGE)): sorted(imported_modules(f) & ENTRY_POINTS) for f in files}
    assert not {f: m for f, m in offenders.items() if m}


def test_the_checker_sees_relative_imports():
    assert "train" in imported_modules(PACKAGE / "cli.py")


def test_no_module_grows_past_400_lines():
    long = {str(f.relative_to(PACKAGE)): n for f in PACKAGE.rglob("*.py") if (n := len(f.read_text().splitlines())) > 400}
    assert not long
