"""`coralbay serve init-tls`: a private certificate authority and a server certificate.

Why a private CA: a hospital server has no public name, so no public CA signs it; clients get the
CA file (or the server certificate's SHA-256 fingerprint) and verify the server against it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from pathlib import Path

from coralbay.atomic import atomic_file
from coralbay.errors import UsageError


def _write_private(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_bytes(data)


def _write_public(path: Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 of the certificate's DER bytes, hex (what clients pin)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def init_tls(folder: Path, hosts: list[str], days: int = 825) -> dict[str, str]:
    """Write ca.pem, ca.key, server.pem, server.key (keys 0600) into `folder`; refuse to overwrite."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = {n: folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key")}
    existing = [str(p) for p in names.values() if p.exists()]
    if existing:
        raise UsageError(f"{existing[0]} exists already; choose another --output folder (nothing was changed).")
    if not hosts:
        raise UsageError("Give the server's host name or address with --host.")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CoralBay serve private CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    private = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                   encryption_algorithm=serialization.NoEncryption())
    _write_private(names["ca.key"], ca_key.private_bytes(**private))
    _write_public(names["ca.pem"], ca.public_bytes(pem))
    _write_private(names["server.key"], key.private_bytes(**private))
    server_pem = cert.public_bytes(pem)
    _write_public(names["server.pem"], server_pem)
    return {**{k: str(v) for k, v in names.items()}, "fingerprint": certificate_fingerprint(server_pem)}
