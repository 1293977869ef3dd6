"""The Synapse config files of a DevServer's state directory.

Owns what goes into them: ``homeserver.yaml`` (written once: server_name and
the secrets; yours to extend), ``devserver.yaml`` (rewritten on every start:
listener and port, paths, rate limits, delayed events; Synapse merges it over
homeserver.yaml, top-level keys replace) and ``log.config``, and the names of
every file in the state directory.

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
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

__all__ = [
    "BASE_CONFIG",
    "LOCK_FILE",
    "LOG_FILE",
    "OVERLAY_CONFIG",
    "RateLimitMode",
    "ensure_base_config",
    "log_config",
    "rate_limits",
    "read_yaml",
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
# except rc_message and rc_federation (a different shape; federation is unused).
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


def write_run_config(
    state_dir: Path, *, url: str, port: int | None, server_name: str, mode: RateLimitMode
) -> None:
    """Rewrite log.config and devserver.yaml for a start on ``port``."""
    sd = state_dir
    (sd / MEDIA_STORE).mkdir(exist_ok=True)
    write_config(sd / LOG_CONFIG, "Rewritten on every start.", log_config(sd / LOG_FILE))
    overlay: dict[str, Any] = {
        "public_baseurl": f"{url}/",
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client", "federation"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(sd / DATABASE)}},
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
    }
    write_config(
        sd / OVERLAY_CONFIG,
        "Rewritten by mxsync.devserver on every start; edit homeserver.yaml instead.",
        overlay,
    )
