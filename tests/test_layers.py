"""The package's shape holds: layers import downwards only, no cycles, no SQL outside storage/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "newsletter"

# Lower layers never import higher ones. The engine's layers first, then the service layer,
# then the doors. A module's layer is its subpackage's (or its own name's, at the top).
LAYERS = {
    "errors": 0,
    "config": 0,
    "deliverability": 0,
    "tokens": 0,
    "site": 0,
    "i18n": 0,
    "storage": 1,
    "content": 2,
    "delivery": 3,
    "services": 4,
    "schedule": 5,
    "web": 5,
    "cli": 5,
    "__main__": 6,
}
# Building SQL (or importing what builds it) is the storage package's business alone.
SQL_NAMES = {
    "select", "insert", "update", "delete", "text", "func", "and_", "or_", "not_", "exists",
    "literal", "case", "bindparam", "column", "table", "join", "union", "Table", "TextClause",
}  # fmt: skip
SQL_WORDS = ("SELECT ", "INSERT INTO", "DELETE FROM", "UPDATE ", "CREATE TABLE", "ALTER TABLE")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue  # Alembic's scripts are storage's, and are run by it
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else ""
    return LAYERS.get(top, 0) if top else 0


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The newsletter modules a file imports (at module level, or anywhere)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("newsletter")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("newsletter"):
            found.add(str(node.module))
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_every_module_sits_in_a_known_layer() -> None:
    for name in modules():
        top = name.split(".")[1] if "." in name else ""
        assert top == "" or top in LAYERS, f"{name}: add its package to LAYERS"


def test_imports_point_down_the_layers() -> None:
    known = modules()
    wrong = []
    for name, path in known.items():
        for target in imports(path, top_level_only=False):
            if target in known and layer(target) > layer(name):
                wrong.append(f"{name} (layer {layer(name)}) imports {target} ({layer(target)})")
    assert wrong == []


def test_no_import_cycle() -> None:
    known = modules()
    graph = {
        name: {t for t in imports(path, top_level_only=True) if t in known and t != name}
        for name, path in known.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize(
    "name", sorted(n for n in modules() if not n.startswith("newsletter.storage"))
)
def test_no_sql_outside_storage(name: str) -> None:
    tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            built = {a.name for a in node.names} & SQL_NAMES
            assert not built, f"{name} imports {built} from {node.module}: queries live in storage/"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            upper = node.value.upper()
            assert not any(w in upper for w in SQL_WORDS if w in node.value), (
                f"{name} holds SQL text: {node.value[:60]!r}"
            )
