"""The layering of the package, read from its source (every import, also in functions and
under TYPE_CHECKING): which room may import which, where the third-party frameworks may be
imported, and that no modules import each other in a circle. docs/architecture.md draws it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import fleet

PACKAGE = Path(fleet.__file__).parent

# What each room may import from fleet (besides itself). "fleet" is the package's face
# (fleet/__init__.py: __version__, Fleet, the models and the errors).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "models": frozenset({"errors"}),
    "events": frozenset({"models", "errors"}),
    "ops": frozenset({"models", "errors"}),
    "config": frozenset({"ops", "models", "errors"}),
    "transport": frozenset({"models", "errors"}),
    "state": frozenset({"events", "models", "errors"}),
    "run": frozenset({"ops", "transport", "events", "models", "errors"}),
    "api": frozenset({"config", "ops", "run", "transport", "state", "events", "models", "errors"}),
    "demo": frozenset({"transport", "models", "errors"}),
    "web": frozenset(
        {"fleet", "api", "config", "run", "transport", "state", "events", "models", "errors"}
    ),
    "cli": frozenset(
        {"fleet", "web", "demo", "api", "config", "transport", "state", "events", "models"}
        | {"errors"}
    ),
    "fleet": frozenset({"api", "models", "errors"}),
    "__main__": frozenset({"cli"}),
}

# Third-party modules only these rooms (or files) may import.
ONLY_IN = {
    "click": ("fleet/cli/",),
    "aiohttp": ("fleet/web/",),
    "asyncssh": ("fleet/transport/_asyncssh.py",),
    # asyncssh, as fleet imports it (without its import-time warning): the transport, and the
    # demo's SSH server, which simulates the hosts
    "fleet.transport._asyncssh": ("fleet/transport/", "fleet/demo/"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_fleet_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file; `from fleet.x import y` names fleet.x.y
    when y is a module, else fleet.x."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{path}:{node.lineno}: relative import"
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                named_module = node.module.startswith("fleet") and is_fleet_module(full)
                yield node.lineno, full if named_module else node.module


def room(module: str) -> str:
    """fleet.run.executor -> run; fleet.models -> models; fleet -> fleet."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fleet"


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_room_is_known() -> None:
    rooms = {room(module_name(path)) for path in sources()}
    assert rooms == set(MAY_IMPORT)


def test_each_room_imports_only_the_rooms_below_it() -> None:
    wrong = []
    for path in sources():
        here = room(module_name(path))
        for line, module in imports(path):
            if module.split(".")[0] != "fleet":
                continue
            there = room(module)
            if there != here and there not in MAY_IMPORT[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {module}")
    assert wrong == []


def test_the_rooms_are_layers_without_a_cycle() -> None:
    placed: list[str] = []
    left = dict(MAY_IMPORT)
    while left:
        ready = [r for r, below in left.items() if below <= set(placed)]
        assert ready, f"the rooms {sorted(left)} import each other in a circle"
        placed.extend(sorted(ready))
        for r in ready:
            del left[r]


def test_frameworks_are_imported_only_where_they_belong() -> None:
    wrong = []
    for path in sources():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for line, module in imports(path):
            for name, allowed in ONLY_IN.items():
                hit = module == name or module.startswith(name + ".")
                if hit and not rel.startswith(allowed):
                    wrong.append(f"{rel}:{line}: imports {module}")
    assert wrong == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph = {
        module_name(path): {m for _, m in imports(path) if m.split(".")[0] == "fleet"}
        for path in sources()
    }

    def cycle_from(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for module in sorted(graph) if (c := cycle_from(module))]
    assert cycles == []


def test_the_layer_test_sees_what_it_forbids(tmp_path: Path) -> None:
    """A sanity check of the reading: a function-level and a TYPE_CHECKING import count."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from fleet.cli.app import AppContext\n"
        "def f() -> None:\n    from fleet.run import executor\n    import click\n"
    )
    assert [m for _, m in imports(probe)] == [
        "typing",
        "fleet.cli.app",
        "fleet.run.executor",
        "click",
    ]
