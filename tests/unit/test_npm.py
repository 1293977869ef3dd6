"""The pinned npm package sets: unknown names and missing node fail clearly."""

import pytest

from mxsync.dev import npm
from mxsync.errors import NodeUnavailable


def test_an_unknown_set_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown npm package set 'nope'.*matrix-crdt"):
        npm.ensure_package_set("nope")


def test_missing_node_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(npm.shutil, "which", lambda _name: None)
    with pytest.raises(NodeUnavailable, match="node and npm are needed"):
        npm.ensure_package_set("y-websocket")
    with pytest.raises(NodeUnavailable, match="node is not on PATH"):
        npm.node_command()


def test_every_pin_is_exact():
    for pins in npm.PACKAGE_SETS.values():
        for package, version in pins.items():
            assert version[0].isdigit(), f"{package} {version} is a range, pin it exactly"
