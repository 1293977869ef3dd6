"""The Synapse config files of a DevServer's state directory.

Owns what goes into them: ``homeserver.yaml`` (written once: server_name and
the secrets; yours to extend), ``devserver.yaml`` (rewritten on every start:
listeners and ports, database, paths, rate limits, delayed events, federation;
Synapse merges it over homeserver.yaml, top-level keys replace) and
``log.config``, and the names of every file in the state directory.

Federation (when a federation port is given): a second listener, TLS with the
self-signed certificate of :mod:`mxsync.dev.tls`, serving only federation
(the client listener then serves only the client API), peers' certificates
not checked, loopback allowed as a destination, no trusted key servers (each
server's keys are fetched from itself), and retries and backoff cut from
minutes to seconds (:data:`FEDERATION_RETRIES`) so a healed link carries
events again within a test's patience. ``rc_federation`` keeps Synapse's
defaults, as real servers do.

Rate limits: ``"default"`` keeps Synapse's own message limit (``rc_message``,
0.2 events/s, burst 10), as real servers do; ``"relaxed"`` lifts it too. In
both modes every other limiter (login, registration, joins, invites, room
creation, delayed-event management, ...) is lifted so a test suite can create
many users and rooms quickly.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .tls import ensure_certificate

__all__ = [
    "BASE_CONFIG",
    "LOCK_FILE",
    "LOG_FILE",
    "FEDERATION_RETRIES",
    "OVERLAY_CONFIG",
    "RateLimitMode",
    "ensure_base_config",
    "federation_settings",
    "log_config",
    "rate_limits",
    "read_yaml",
    "sqlite_database",
    "write_config",
    "write_run_config",
]

log = logging.getLogger("mxsync.devserver")

RateLimitMode = Literal["default", "relaxed"]

BASE_CONFIG = "homeserver.yaml"
OVERLAY_CONFIG = "devserver.yaml"
LOG_CONFIG = "log.config"
LOG_FILE = "homeserver.log"
DATABASE = "homeserver.db"
MEDIA_STORE = "media_store"
LOCK_FILE = "devserver.lock"

# Effectively unlimited for a single-machine dev server.
_UNLIMITED = {"per_second": 100_000, "burst_count": 1_000_000}
# Every client-facing limiter Synapse 1.163 reads (synapse/config/ratelimiting.py)
# except rc_message and rc_federation (a different shape; real servers keep it).
_LIFTED_IN_BOTH_MODES: dict[str, Any] = {
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_admin_redaction": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}

# Synapse 1.163's federation section (synapse/config/federation.py). The
# defaults (60 s timeout, 10 long retries up to 60 s apart, a 10 min first
# backoff growing to 7 days) would hold a healed link down for the rest of a test.
FEDERATION_RETRIES: dict[str, Any] = {
    "client_timeout": "10s",
    "max_short_retries": 1,
    "max_short_retry_delay": 500,  # ms
    "max_long_retries": 2,
    "max_long_retry_delay": "2s",
    "destination_min_retry_interval": "1s",
    "destination_retry_multiplier": 1.5,
    "destination_max_retry_interval": "5s",
}


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; without PyYAML, the JSON-with-#-comments we write."""
    text = path.read_text()
    try:
        import yaml
    except ImportError:
        text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        data = json.loads(text or "{}")
    else:
        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping")
    return data


def write_config(path: Path, header: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON (valid YAML) behind a comment header, atomically.

    Mode 0600: homeserver.yaml holds the secrets.
    """
    comments = "".join(f"# {ln}\n" for ln in header.splitlines())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(comments + json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def rate_limits(mode: RateLimitMode) -> dict[str, Any]:
    limits = dict(_LIFTED_IN_BOTH_MODES)
    if mode == "relaxed":
        limits["rc_message"] = _UNLIMITED
    # "default": no rc_message key, so Synapse's own 0.2/s burst 10 applies
    # (or whatever homeserver.yaml sets).
    return limits


def log_config(log_file: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                "%(request)s - %(message)s"
            }
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(log_file),
                "encoding": "utf8",
            }
        },
        # Never DEBUG on synapse.storage.SQL: it would log access tokens.
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": "WARNING", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def ensure_base_config(state_dir: Path, server_name: str) -> str:
    """Create homeserver.yaml on the first run; return the shared secret."""
    path = state_dir / BASE_CONFIG
    if not path.exists():
        write_config(
            path,
            "Written once by mxsync.devserver; the secrets must stay stable.\n"
            "Add any Synapse option here; devserver.yaml overrides the keys it sets.",
            {
                "server_name": server_name,
                "report_stats": False,
                "registration_shared_secret": secrets.token_urlsafe(32),
                "macaroon_secret_key": secrets.token_urlsafe(32),
                "form_secret": secrets.token_urlsafe(32),
            },
        )
        log.info("created %s", path)
    base = read_yaml(path)
    if base.get("server_name") != server_name:
        raise ConfigError(
            f"state dir {state_dir} belongs to server_name "
            f"{base.get('server_name')!r}, not {server_name!r}; "
            "a homeserver cannot change its name: use another state dir"
        )
    secret = base.get("registration_shared_secret")
    if not isinstance(secret, str) or not secret:
        raise ConfigError(f"{path} has no registration_shared_secret")
    return secret


def sqlite_database(state_dir: Path) -> dict[str, Any]:
    """Synapse's ``database`` section for the state dir's SQLite file."""
    return {"name": "sqlite3", "args": {"database": str(state_dir / DATABASE)}}


def _listener(port: int | None, names: list[str], *, tls: bool) -> dict[str, Any]:
    return {
        "port": port,
        "bind_addresses": ["127.0.0.1"],
        "type": "http",
        "tls": tls,
        "x_forwarded": False,
        "resources": [{"names": names, "compress": False}],
    }


def federation_settings(state_dir: Path, federation_port: int) -> dict[str, Any]:
    """The overlay keys of a federating server: its TLS listener and the rest."""
    cert, key = ensure_certificate(state_dir)
    return {
        "tls_certificate_path": str(cert),
        "tls_private_key_path": str(key),
        "federation_verify_certificates": False,
        # The default blocklist has 127.0.0.0/8, for federation too.
        "ip_range_blacklist": [],
        "federation": FEDERATION_RETRIES,
        "listeners": [_listener(federation_port, ["federation"], tls=True)],
    }


def write_run_config(
    state_dir: Path,
    *,
    url: str,
    port: int | None,
    server_name: str,
    mode: RateLimitMode,
    federation_port: int | None = None,
    database: dict[str, Any] | None = None,
    app_services: Sequence[Path] = (),
) -> None:
    """Rewrite log.config and devserver.yaml for a start on ``port``.

    ``app_services``: registration files of application services (the fleet
    gateway's, ``mxsync fleet registration``), listed in ``app_service_config_files``.

    ``federation_port``: also serve federation there, over TLS (see the module
    docstring). ``database``: Synapse's ``database`` section, SQLite if None.
    """
    sd = state_dir
    (sd / MEDIA_STORE).mkdir(exist_ok=True)
    write_config(sd / LOG_CONFIG, "Rewritten on every start.", log_config(sd / LOG_FILE))
    federating: dict[str, Any] = {}
    client_names = ["client", "federation"]
    if federation_port is not None:
        federating = federation_settings(sd, federation_port)
        client_names = ["client"]
    overlay: dict[str, Any] = {
        "public_baseurl": f"{url}/",
        "listeners": [_listener(port, client_names, tls=False), *federating.pop("listeners", [])],
        "database": database or sqlite_database(sd),
        "media_store_path": str(sd / MEDIA_STORE),
        "signing_key_path": str(sd / f"{server_name}.signing.key"),
        "log_config": str(sd / LOG_CONFIG),
        "report_stats": False,
        "enable_registration": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # MSC4140 delayed events: in Synapse 1.163 this key alone turns them
        # on (msc4140_max_delayed_events_per_user defaults to 100).
        "max_event_delay_duration": "24h",
        # 12 rounds cost ~0.25 s per register/login; a dev server's
        # passwords guard nothing.
        "bcrypt_rounds": 4,
        **rate_limits(mode),
        **federating,
    }
    if app_services:
        overlay["app_service_config_files"] = [str(Path(p).resolve()) for p in app_services]
    write_config(
        sd / OVERLAY_CONFIG,
        "Rewritten by mxsync.devserver on every start; edit homeserver.yaml instead.",
        overlay,
    )
