"""Every import points down the layers: entry points (`pipelines/`) → capabilities
(`assets_defs/`, `webhook_app/`; neither imports the other) → data and clients (`resources/`)
→ schema (`sql/`). Read from the source with `ast`, imports inside functions included.
There is no exception: a module two capabilities share moves down into `resources/`."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# What each layer may import of the project, besides itself; the standard library and
# third-party packages are always allowed.
MAY_IMPORT = {
    "pipelines": {"assets_defs", "webhook_app", "resources", "sql"},
    "assets_defs": {"resources", "sql"},
    "webhook_app": {"resources", "sql"},
    "resources": {"sql"},
    "sql": set(),
}
# The dev stack (`pipelines.dev`) is for the CLI, whose commands run on the local stack (in
# production it starts nothing); the code location and the workers never import it.
DEV = "pipelines.dev"
MAY_IMPORT_DEV = ("pipelines.cli", "pipelines.errors", DEV)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module the file imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            else:
                found.add(node.module or "")
    return found


def _project_modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for layer in MAY_IMPORT
        for path in sorted((REPO / layer).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_every_import_points_down():
    upward = []
    for module, path in _project_modules().items():
        layer = module.split(".")[0]
        for imported in _imports(path, module):
            target = imported.split(".")[0]
            if target in MAY_IMPORT and target != layer and target not in MAY_IMPORT[layer]:
                upward.append(f"{module} imports {imported}")
    assert upward == [], "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_only_the_cli_reaches_the_dev_stack():
    reaching = [
        f"{module} imports {imported}"
        for module, path in _project_modules().items()
        if not any(_within(module, allowed) for allowed in MAY_IMPORT_DEV)
        for imported in _imports(path, module)
        if _within(imported, DEV)
    ]
    assert reaching == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser finds imports at the top, in functions and relative ones."""
    source = tmp_path / "probe.py"
    source.write_text(
        "import resources.settings\n"
        "def f():\n"
        "    from pipelines.cli import main\n"
        "from . import sibling\n"
        "from ..media import store\n"
    )
    assert _imports(source, "assets_defs.dispatch.probe") == {
        "resources.settings",
        "pipelines.cli",
        "assets_defs.dispatch",
        "assets_defs.media",
    }
