"""``python -m mxsync.cli`` runs the command line, as ``python -m mxsync`` does."""

import sys

from . import main

sys.exit(main())
