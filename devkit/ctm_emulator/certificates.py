"""The emulator's own PKI: a throw-away CA and a server certificate it signs, made at start.

EC P-256 keys keep startup in the milliseconds. The certificates carry the extensions that
Python 3.13's strict verification (``VERIFY_X509_STRICT``) insists on, so clients verify them
exactly as they would verify a real CTM web certificate issued by a private CA.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(hours=1)  # tolerate small clock differences between processes


@dataclass(frozen=True)
class ServerPki:
    """Where the PEM files are; ``directory`` is removed by ``discard``."""

    directory: Path
    ca_pem: str
    ca_file: Path
    cert_file: Path
    key_file: Path

    def discard(self) -> None:
        """Delete the files (the CA stays valid in memory for whoever copied ``ca_pem``)."""
        for path in (self.ca_file, self.cert_file, self.key_file):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # someone left a file there: a stray dir is harmless
            self.directory.rmdir()


def create_server_pki(host: str) -> ServerPki:
    """Make a CA and a server certificate for ``localhost``, ``127.0.0.1`` and ``host``."""
    now = dt.datetime.now(dt.UTC)
    authority = _create_authority(now)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _sign_server_certificate(authority, server_key, host, now)
    return _write_pem_files(authority.certificate, server_cert, server_key)


@dataclass(frozen=True)
class _Authority:
    """The throw-away CA: its key signs the server certificate, its SKI names it as issuer."""

    key: ec.EllipticCurvePrivateKey
    name: x509.Name
    key_identifier: x509.SubjectKeyIdentifier
    certificate: x509.Certificate


def _create_authority(now: dt.datetime) -> _Authority:
    """A self-signed root CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CTM Emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, "CTM Emulator Root CA"),
        ]
    )
    key_identifier = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        _valid_from(now)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(key_identifier, critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(key, name, key_identifier, certificate)


def _sign_server_certificate(
    authority: _Authority, server_key: ec.EllipticCurvePrivateKey, host: str, now: dt.datetime
) -> x509.Certificate:
    """A TLS server certificate for ``localhost``, ``127.0.0.1`` and ``host``, signed by the CA."""
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    names.extend(_extra_name(host, names))
    return (
        _valid_from(now)
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(authority.name)
        .public_key(server_key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                authority.key_identifier
            ),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )


def _valid_from(now: dt.datetime) -> x509.CertificateBuilder:
    """A builder with a random serial, valid from a little before ``now`` for ``_VALIDITY``."""
    return (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """Digital signatures always; certificate and CRL signing for the CA only."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _write_pem_files(
    ca_cert: x509.Certificate,
    server_cert: x509.Certificate,
    server_key: ec.EllipticCurvePrivateKey,
) -> ServerPki:
    """Write the CA, the server certificate and its key as PEM files in a fresh directory."""
    directory = Path(tempfile.mkdtemp(prefix="ctm-emulator-"))
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server-key.pem"
    ca_file.write_text(ca_pem, encoding="ascii")
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private_key(key_file, server_key)
    return ServerPki(directory, ca_pem, ca_file, cert_file, key_file)


def _write_private_key(key_file: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # The private key file is readable by its owner only, like any key on disk should be.
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def _extra_name(host: str, existing: list[x509.GeneralName]) -> list[x509.GeneralName]:
    """The bind host as a SAN too, unless it is a wildcard or already listed."""
    if host in ("", "0.0.0.0", "::", "localhost", "127.0.0.1"):
        return []
    try:
        name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        name = x509.DNSName(host)
    return [] if name in existing else [name]
