"""The self-signed certificate of a DevServer's TLS federation listener.

Owns ``federation.crt`` and ``federation.key`` in the state directory: made
once with ``cryptography`` (a dependency of Synapse itself, so it is there
wherever a DevServer can run) and kept across runs. Peers never check it: a
federating DevServer sets ``federation_verify_certificates: false``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

__all__ = ["CERT_FILE", "KEY_FILE", "ensure_certificate"]

CERT_FILE = "federation.crt"
KEY_FILE = "federation.key"
_VALID_DAYS = 3650


def ensure_certificate(state_dir: Path) -> tuple[Path, Path]:
    """The (certificate, key) paths for 127.0.0.1, created on the first call."""
    cert_path, key_path = state_dir / CERT_FILE, state_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    # Imported here: only a federating DevServer needs it.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
