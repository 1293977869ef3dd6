"""The house rules that reading the code alone would not enforce.

- Imports flow one way: errors <- protocol <- engine <- features (docs, streams)
  <- client <- the package <- dev tools and CLI. Every ``import`` statement of
  ``mxsync/`` is read with ``ast`` (lazy imports inside functions and
  ``TYPE_CHECKING`` blocks included) and none may reach a layer above its own
  module's; the two features do not import each other either.
- ``mxsync.__all__`` is pinned: a public name is added or removed on purpose.
- Every exception class the package defines lives in ``mxsync/errors.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mxsync

ROOT = Path(mxsync.__file__).resolve().parent

#: (module prefix, layer). The longest matching prefix wins.
LAYERS: list[tuple[str, int]] = [
    ("mxsync.errors", 0),
    ("mxsync.protocol", 1),
    ("mxsync.engine", 2),
    ("mxsync.docs", 3),
    ("mxsync.streams", 3),
    ("mxsync.client", 4),
    ("mxsync", 5),  # the package's __init__: public names only
    ("mxsync.__main__", 6),
    ("mxsync.dev", 6),
    ("mxsync.cli", 6),
    ("mxsync.gateway", 6),  # the y-websocket gateway, above the client like cli/
    ("mxsync.fleet", 6),  # MQTT bridge: many devices' publishers from one client
]
#: Features: same layer, but neither may import the other.
FEATURES = ("mxsync.docs", "mxsync.streams")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def layer_of(module: str) -> tuple[str, int]:
    best: tuple[str, int] | None = None
    for prefix, layer in LAYERS:
        inside = module == prefix or (prefix != "mxsync" and module.startswith(prefix + "."))
        if inside and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def exists(module: str) -> bool:
    rel = Path(*module.split("."))
    base = ROOT.parent / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(source: str, module: str, package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) for every mxsync module that ``source`` imports."""
    here = module if package else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mxsync"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "mxsync":
                continue
            # ``from ..protocol import docs`` imports the module mxsync.protocol.docs.
            subs = [f"{base}.{a.name}" for a in node.names if exists(f"{base}.{a.name}")]
            out += [(node.lineno, m) for m in subs] if subs else [(node.lineno, base)]
    return out


def violations(source: str, module: str, package: bool) -> list[str]:
    own_prefix, own = layer_of(module)
    bad = []
    for line, target in imported_modules(source, module, package):
        prefix, layer = layer_of(target)
        if layer > own:
            bad.append(f"{module}:{line} imports {target} (layer {layer} > {own})")
        elif (
            layer == own
            and own_prefix in FEATURES
            and prefix in FEATURES
            and prefix != own_prefix
        ):
            bad.append(f"{module}:{line} imports {target} (features do not import each other)")
    return bad


def all_modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_imports_flow_down_the_layers():
    bad = []
    for path in all_modules():
        bad += violations(path.read_text(), module_name(path), is_package(path))
    assert not bad, "upward imports:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("mxsync.engine.sync", "from ..docs import SyncedDoc"),
        ("mxsync.engine.sync", "def f():\n    from ..client import Client\n"),
        ("mxsync.engine.sync", "from typing import TYPE_CHECKING\n"
                               "if TYPE_CHECKING:\n    from mxsync.streams import Publisher\n"),
        ("mxsync.protocol.docs", "from ..engine import events"),
        ("mxsync.errors", "from .protocol import types"),
        ("mxsync.streams.history", "from ..docs import SyncedDoc"),
        ("mxsync.docs", "from . import client"),  # docs/__init__: ".client" is mxsync.docs.client
        ("mxsync.streams", "from .. import Client"),
    ],
)
def test_the_layering_check_catches_an_upward_import(module, source):
    package = module in ("mxsync.docs", "mxsync.streams")
    found = violations(source, module, package)
    if module == "mxsync.docs":
        # mxsync.docs.client does not exist: resolved to the package itself, same layer.
        assert found == []
    else:
        assert found, f"{source!r} in {module} should be refused"


def test_the_layering_check_lets_downward_imports_through():
    assert violations("from ..engine.events import RoomEvent", "mxsync.streams.history",
                      False) == []
    assert violations("from .errors import ConfigError", "mxsync.client", False) == []


def test_every_module_is_in_a_layer():
    for path in all_modules():
        layer_of(module_name(path))


def test_public_names_are_pinned():
    assert sorted(mxsync.__all__) == [
        "Client",
        "Command",
        "CommandError",
        "CommandExpired",
        "CommandFailed",
        "CommandTimeout",
        "ConfigError",
        "ForbiddenError",
        "HomeserverUnavailable",
        "LoginError",
        "MatrixCrdtDoc",
        "MatrixError",
        "MxsyncError",
        "OutgoingEvent",
        "ProtocolError",
        "Publisher",
        "RateLimitedError",
        "Reading",
        "RoomEvent",
        "SendHandle",
        "Status",
        "Subscriber",
        "SyncedDoc",
    ]
    for name in mxsync.__all__:
        assert getattr(mxsync, name) is not None


def _exception_classes(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                text = ast.unparse(base)
                if text.endswith(("Error", "Exception", "Unavailable", "Full", "Locked")):
                    names.append(node.name)
    return names


def test_every_exception_lives_in_errors():
    from mxsync import errors

    stray = []
    for path in all_modules():
        if path.name == "errors.py" and path.parent == ROOT:
            continue
        stray += [f"{module_name(path)}.{n}" for n in _exception_classes(ast.parse(
            path.read_text()))]
    assert not stray, f"exceptions outside mxsync/errors.py: {stray}"
    tree_doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in tree_doc, f"{name} is missing from the tree in errors.py's docstring"
        assert issubclass(getattr(errors, name), errors.MxsyncError)
