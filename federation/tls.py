"""TLS shared by every tier's HTTP clients and by provisioning: the client context that checks a server against the
deployment's own CA (``--ca-file``), and a small private CA that issues server certificates with chosen subject
alternative names (a deployment's internal CA, or the tests' CA).

Keys are ECDSA P-256, signatures SHA-256, leaf lifetime `CERT_DAYS`; CA certificates carry basicConstraints CA with
path length 0 and keyCertSign, leaves carry serverAuth (and clientAuth when asked) and their SANs (RFC 5280 section
4.2.1.6: clients match the host against the SANs, not the common name).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.errors import ConfigError
from federation.runtime import atomic_write_bytes

CERT_DAYS = 825  # the CA/Browser Forum's former maximum leaf lifetime; a private CA may choose its own


def tls_context(ca_file: Path | None) -> ssl.SSLContext | bool:
    """What an httpx client verifies the server with: only the deployment's CA bundle `ca_file` (PEM), or the
    system's CAs (True) when none is given."""
    if ca_file is None:
        return True
    if not Path(ca_file).is_file():
        raise ConfigError(f"--ca-file {ca_file}: no such file")
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"--ca-file {ca_file}: not a PEM CA bundle ({exc})") from exc


def certificate_refused(exc: BaseException) -> bool:
    """True when a connection failed because the server's certificate did not verify (an error no retry heals)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


@dataclass(frozen=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "wearfed private CA") -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, common_name: str, *, hosts: Sequence[str], client: bool = False,
              days: int = CERT_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A server certificate for `hosts` (DNS names and IP addresses, as subject alternative names)."""
        if not hosts:
            raise ConfigError("a server certificate needs at least one host name or address")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                      common_name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return key, cert


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def write_pem(path: Path, obj: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    """A certificate (0644) or private key (0600, unencrypted PKCS#8) as PEM."""
    if isinstance(obj, x509.Certificate):
        atomic_write_bytes(path, obj.public_bytes(serialization.Encoding.PEM), mode=0o644)
    else:
        atomic_write_bytes(path, obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()), mode=0o600)
    return path


@dataclass(frozen=True)
class ServerFiles:
    ca: Path
    cert: Path
    key: Path


def server_files(directory: Path, *, hosts: Sequence[str], name: str = "cloud") -> ServerFiles:
    """A fresh CA and one server certificate for `hosts`, written as ``ca.crt``, ``<name>.crt``, ``<name>.key``."""
    ca = CertificateAuthority.create()
    key, cert = ca.issue(name, hosts=hosts)
    return ServerFiles(ca=write_pem(directory / "ca.crt", ca.cert), cert=write_pem(directory / f"{name}.crt", cert),
                       key=write_pem(directory / f"{name}.key", key))
