"""What mxsync.dev.config writes for a federating server and for PostgreSQL (no Synapse)."""

from __future__ import annotations

from pathlib import Path

from mxsync.dev.config import FEDERATION_RETRIES, OVERLAY_CONFIG, read_yaml, write_run_config
from mxsync.protocol import api


def _overlay(tmp_path: Path, **kw: object) -> dict:
    write_run_config(tmp_path, url="http://127.0.0.1:8008", port=8008,
                     server_name="127.0.0.1:9000", mode="default", **kw)  # type: ignore[arg-type]
    return read_yaml(tmp_path / OVERLAY_CONFIG)


def test_a_plain_server_has_one_listener_for_client_and_federation(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path)
    (listener,) = overlay["listeners"]
    assert listener["resources"][0]["names"] == ["client", "federation"]
    assert overlay["database"]["name"] == "sqlite3"
    assert "federation" not in overlay and "tls_certificate_path" not in overlay


def test_a_federating_server_serves_federation_only_over_tls(tmp_path: Path) -> None:
    overlay = _overlay(tmp_path, federation_port=9001)
    client, fed = overlay["listeners"]
    assert client["resources"][0]["names"] == ["client"] and not client["tls"]
    assert fed["port"] == 9001 and fed["tls"] and fed["bind_addresses"] == ["127.0.0.1"]
    assert fed["resources"][0]["names"] == ["federation"]
    assert overlay["federation_verify_certificates"] is False
    assert overlay["ip_range_blacklist"] == []
    assert overlay["trusted_key_servers"] == []
    assert overlay["federation"] == FEDERATION_RETRIES
    cert = Path(overlay["tls_certificate_path"])
    assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert Path(overlay["tls_private_key_path"]).stat().st_mode & 0o077 == 0
    # Kept across starts: peers may have seen it.
    assert _overlay(tmp_path, federation_port=9002)["tls_certificate_path"] == str(cert)
    assert cert.read_bytes() == Path(overlay["tls_certificate_path"]).read_bytes()


def test_a_database_section_replaces_sqlite(tmp_path: Path) -> None:
    pg = {"name": "psycopg2", "args": {"user": "postgres", "database": "synapse",
                                       "host": "/x"}}
    assert _overlay(tmp_path, database=pg)["database"] == pg


def test_reset_connection_names_the_destination_in_one_segment() -> None:
    req = api.admin_reset_connection("127.0.0.1:8448")
    assert req.method == "POST" and req.auth
    assert req.path == ("/_synapse/admin/v1/federation/destinations/127.0.0.1%3A8448"
                        "/reset_connection")
