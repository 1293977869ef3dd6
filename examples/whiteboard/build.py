"""``python -m examples.whiteboard.build``: bundle the page's JS (web/ -> static/).

Bundles ``web/whiteboard.js`` with the npm packages it imports (yjs,
y-websocket, pinned in :data:`mxsync.dev.npm.PACKAGE_SETS` ``"whiteboard-build"``)
into ``static/whiteboard.js`` with esbuild, one self-contained file for the
browser. The built file is committed, so running the example needs neither
Node nor the network; run this after changing ``web/`` (``make whiteboard-js``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mxsync.dev.npm import ensure_package_set

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "web" / "whiteboard.js"
BUNDLE = HERE / "static" / "whiteboard.js"


def build(out: Path = BUNDLE) -> Path:
    modules = ensure_package_set("whiteboard-build")
    esbuild = modules / ".bin" / "esbuild"
    banner = ("/* Built by `python -m examples.whiteboard.build` from web/whiteboard.js with "
              "yjs and y-websocket (npm, MIT); do not edit. */")
    subprocess.run(
        [str(esbuild), str(SOURCE), "--bundle", "--format=iife", "--target=es2020",
         "--minify", "--legal-comments=none", f"--banner:js={banner}", f"--outfile={out}"],
        check=True, env={**os.environ, "NODE_PATH": str(modules)}, cwd=HERE,
    )
    return out


def main() -> int:
    out = build(Path(sys.argv[1]) if len(sys.argv) > 1 else BUNDLE)
    print(f"built {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
