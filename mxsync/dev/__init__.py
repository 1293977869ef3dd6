"""Development tools: an embedded Synapse (:class:`DevServer`) and the demo.

- :mod:`.server`: :class:`DevServer` and :class:`Credentials`, the lifecycle
  of one Synapse child and user registration through the admin API;
- :mod:`.federation`: :class:`Federation`, several DevServers that federate,
  each behind a :class:`TcpProxy` (:mod:`.proxy`) whose link tests cut and heal;
- :mod:`.tls`: the federation listener's self-signed certificate;
- :mod:`.postgres`: a DevServer's own PostgreSQL cluster (``database="postgres"``);
- :mod:`.config`: what goes into the state directory's config files;
- :mod:`.lock`: the lock that keeps two DevServers off one state directory;
- :mod:`.process`: spawning, signalling and reaping children, free ports;
- :mod:`.demo`: the examples running together on a DevServer.

Their commands (``mxsync devserver``, ``mxsync demo``) are in :mod:`mxsync.cli`.
"""

from ..errors import DemoError, DevServerError, StateDirLocked
from .config import RateLimitMode
from .federation import Federation
from .proxy import CutMode, TcpProxy
from .server import ADMIN_LOCALPART, DEFAULT_STATE_DIR, Credentials, Database, DevServer

__all__ = [
    "ADMIN_LOCALPART",
    "DEFAULT_STATE_DIR",
    "Credentials",
    "CutMode",
    "Database",
    "DemoError",
    "DevServer",
    "DevServerError",
    "Federation",
    "RateLimitMode",
    "StateDirLocked",
    "TcpProxy",
]
