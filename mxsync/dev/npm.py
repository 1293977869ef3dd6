"""Pinned npm package sets for the JS interop tests and the peers benchmark.

Owns the list of the JavaScript peers mxsync is tested and measured against
(stock Yjs and y-websocket, Matrix-CRDT and the matrix-js-sdk it needs) and
their installation. A set is installed on first use into a cache directory
(``$MXSYNC_NPM_CACHE`` or ``~/.cache/mxsync/npm/<set>-<hash>``), never into the
repository, with ``npm install --no-save`` of exact versions; the hash covers
the pinned versions, so changing a pin installs a fresh directory next to the
old one. A lock file keeps two processes (pytest workers, a test and the
benchmark) from installing one set at once.

Why these pins (checked by running them here):
- matrix-crdt 0.2.0 is the last release; its CommonJS build is used, the ESM
  build breaks under Node on ``lodash.throttle``;
- matrix-js-sdk 19.7.0: 21 and later changed ``http.authedRequest``, which
  matrix-crdt calls; 19.x needs ``sdk.request(require("request"))`` in Node;
- lib0 0.2.52 or later: 0.2.51 truncates the 53-bit client ids of yrs/pycrdt
  to 32 bits and replicas silently diverge.

Use::

    from mxsync.dev.npm import ensure_package_set, node_command
    modules = ensure_package_set("y-websocket")     # .../node_modules
    subprocess.run([*node_command(), "client.js"], env={"NODE_PATH": str(modules)})
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import NodeUnavailable

__all__ = ["PACKAGE_SETS", "ensure_package_set", "node_command", "node_available"]

#: Each set: exact npm versions installed together into one directory.
PACKAGE_SETS: dict[str, dict[str, str]] = {
    # A stock Yjs app's side: the document, the provider and its protocols.
    "y-websocket": {
        "yjs": "13.6.27",
        "y-protocols": "1.0.6",
        "lib0": "0.2.114",
        "y-websocket": "2.1.0",
        "ws": "8.18.3",
    },
    # The whiteboard example's page, bundled at build time (examples/whiteboard/build.py):
    # the same Yjs and provider as a stock app, and esbuild to bundle them.
    "whiteboard-build": {
        "esbuild": "0.28.2",
        "yjs": "13.6.27",
        "y-protocols": "1.0.6",
        "lib0": "0.2.114",
        "y-websocket": "2.1.0",
    },
    # An independent Sparkplug B edge node (Eclipse Tahu's JS client and payload
    # codec, with the mqtt package it brings) for the MQTT bridge's interop test.
    "sparkplug": {
        "sparkplug-client": "3.2.4",
        "sparkplug-payload": "1.0.3",
    },
    # Matrix-CRDT 0.2.0 in Node, with the matrix-js-sdk it works with.
    "matrix-crdt": {
        "matrix-crdt": "0.2.0",
        "matrix-js-sdk": "19.7.0",
        "request": "2.88.2",
        "yjs": "13.6.27",
        "y-protocols": "1.0.6",
        "lib0": "0.2.114",
        "another-json": "0.2.0",
    },
}

_INSTALL_TIMEOUT = 900.0


def node_available() -> bool:
    """Whether ``node`` and ``npm`` are on PATH."""
    return shutil.which("node") is not None and shutil.which("npm") is not None


def node_command() -> list[str]:
    """The command that runs Node.js; raises :class:`NodeUnavailable` when missing."""
    node = shutil.which("node")
    if node is None:
        raise NodeUnavailable("node is not on PATH (install Node.js 18 or later)")
    return [node]


def _cache_root() -> Path:
    configured = os.environ.get("MXSYNC_NPM_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mxsync" / "npm"


def ensure_package_set(name: str, *, cache: Path | None = None) -> Path:
    """Install the pinned set ``name`` if needed; return its ``node_modules``.

    Raises :class:`NodeUnavailable` when node/npm are missing or ``npm install``
    fails (its output is in the message), and
    :class:`ValueError` for an unknown set.
    """
    if name not in PACKAGE_SETS:
        raise ValueError(f"unknown npm package set {name!r}; known: {sorted(PACKAGE_SETS)}")
    if not node_available():
        raise NodeUnavailable("node and npm are needed for the JS peers; neither is on PATH")
    pins = PACKAGE_SETS[name]
    digest = hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:12]
    root = (cache or _cache_root()) / f"{name}-{digest}"
    modules = root / "node_modules"
    done = root / ".installed"
    if done.exists():
        return modules
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():  # another process finished while we waited
            return modules
        (root / "package.json").write_text(
            json.dumps({"name": f"mxsync-peers-{name}", "private": True, "dependencies": pins})
        )
        cmd = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            out = subprocess.run(
                cmd, cwd=root, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeUnavailable(
                f"npm install of {name!r} took longer than {_INSTALL_TIMEOUT:.0f} s"
            ) from exc
        if out.returncode != 0:
            raise NodeUnavailable(
                f"npm install of {name!r} failed ({out.returncode}): {out.stderr[-2000:]}"
            )
        done.write_text(json.dumps(pins))
    return modules
