"""A self-signed certificate for the Salesforce emulator on loopback.

simple-salesforce always builds ``https://`` URLs, so the emulator must serve
TLS; the connector's ``requests`` session trusts exactly this certificate
(``session.verify = cert``), so verification stays on. The key and the
certificate are generated on first use into a directory that git ignores
(``var/crm/`` by default, a temp dir in tests): a private key is never
committed.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_NAME = "salesforce-emulator.pem"
KEY_NAME = "salesforce-emulator.key"


def ensure_certificate(directory: str | os.PathLike) -> tuple[Path, Path]:
    """Return (cert_path, key_path) in ``directory``, generating them when
    missing or expiring within a day. Valid for 127.0.0.1, ::1 and localhost."""
    directory = Path(directory)
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1):
            return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "martech Salesforce emulator")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        # A CA:TRUE self-signed leaf, so OpenSSL accepts it as its own trust anchor.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    # Write the key first with owner-only permissions, then the certificate:
    # a reader that sees the certificate finds its key already there.
    tmp_key = key_path.with_suffix(".key.tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    os.replace(tmp_key, key_path)
    tmp_cert = cert_path.with_suffix(".pem.tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp_cert, cert_path)
    return cert_path, key_path
