"""`wearfed provision`: broker password file, ACL, per-device credentials and TLS material for a deployment.

Writes into one directory:

- ``passwd``: Mosquitto 2 password file. Each line is ``user:$7$<iterations>$<b64 salt>$<b64 hash>``,
  PBKDF2-HMAC-SHA512 (RFC 8018) with a 12-byte salt and 101 iterations, the format and defaults of
  ``mosquitto_passwd`` 2.0 (checked against it in the tests).
- ``acl``: one ``user`` block per principal. A device may write only ``wearfed/v1/<its gateway>/<its id>/#``
  and read only ``wearfed/v1/<its gateway>/model``; a gateway's ingest (``gateway-<gw>``) only reads its
  devices' readings and status; its model relay (``gateway-<gw>-relay``, a principal of its own) only writes
  (and reads back) the model topic. With ``use_username_as_clientid`` every principal is its own client id, so
  the relay's clean-session publishes can never take over (and discard) the ingest's persistent session. Mosquitto's
  ``pattern`` lines can substitute only ``%u``/``%c``, not the device's gateway, so exact per-user rules are
  written instead (stricter than any pattern that fits).
- ``credentials.json`` (mode 0600): every device's, gateway ingest's and relay's username and random password, and
  each device's consent key (Ed25519 seed, `federation.consent`) that signs a consent withdrawal.
- ``consent-keys-<gw>.txt``: the public halves of that gateway's devices' consent keys (``--consent-keys``).
- ``ca.crt``/``ca.key``, ``server.crt``/``server.key`` (EC P-256; subject alternative names: `sans`, the host
  names and IP addresses clients use to reach the broker, by default localhost and 127.0.0.1), and with
  ``client_certs`` one certificate per principal under ``clients/``.
- ``mosquitto-auth.conf``: the lines a Mosquitto config needs to use all of the above, with
  ``use_username_as_clientid`` so that no device can take over another's session, and the TLS listener on
  `listen_host` (default 127.0.0.1; ``0.0.0.0`` for every interface), optionally requiring client certificates.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device.errors import ProvisionError
from federation.consent import consent_key_pair
from federation.runtime import atomic_write_bytes
from federation.telemetry import CONSENT, READINGS, STATUS, device_subscription, device_topic_tree, model_topic

PBKDF2_ITERATIONS = 101  # mosquitto_passwd 2.0 default (PW_DEFAULT_ITERATIONS)
SALT_BYTES = 12  # mosquitto_passwd 2.0 SALT_LEN
HASH_PREFIX = "$7$"  # Mosquitto 2: PBKDF2-SHA512
CERT_DAYS = 825


def device_ids(gateway: str, devices_per_gateway: int) -> list[str]:
    return [f"{gateway}-dev{k:03d}" for k in range(1, devices_per_gateway + 1)]


def gateway_username(gateway: str) -> str:
    """The gateway daemon's MQTT username and client id (`gateway.ingest` connects as ``gateway-<id>``)."""
    return f"gateway-{gateway}"


def relay_username(gateway: str) -> str:
    """The gateway's model relay: its own MQTT username and client id (`gateway.relay`), never the ingest's."""
    return f"gateway-{gateway}-relay"


def _check_name(name: str) -> str:
    if not name or any(c in name for c in "/+#:\n\r\t ") or len(name) > 64:
        raise ProvisionError(f"id {name!r} is not usable as an MQTT username and topic level")
    return name


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2 password-file hash of `password` (``$7$iterations$salt$hash``)."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{HASH_PREFIX}{iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_mosquitto_hash(password: str, encoded: str) -> bool:
    """Whether `password` matches a ``$7$`` hash line value (for tests and operators)."""
    try:
        _, seven, iterations, salt, digest = encoded.split("$")
        if seven != "7":
            return False
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
        return secrets.compare_digest(got, base64.b64decode(digest))
    except ValueError:
        return False


def acl_text(gateways: dict[str, list[str]]) -> str:
    lines = ["# wearfed ACL: written by `wearfed provision`; devices publish only under their own topic", ""]
    for gw, devices in gateways.items():
        lines += [f"user {gateway_username(gw)}", f"topic read {device_subscription(gw, READINGS)}",
                  f"topic read {device_subscription(gw, STATUS)}",
                  f"topic read {device_subscription(gw, CONSENT)}", "",
                  f"user {relay_username(gw)}", f"topic readwrite {model_topic(gw)}", ""]
        for dev in devices:
            lines += [f"user {dev}", f"topic write {device_topic_tree(gw, dev)}", f"topic read {model_topic(gw)}", ""]
    return "\n".join(lines)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))


def _write_private(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=0o600)  # never readable by others, not even half-written


DEFAULT_SANS = ("localhost", "127.0.0.1")


def _san(name: str) -> x509.GeneralName:
    """An IP address SAN for an address, else a DNS name SAN (RFC 5280 section 4.2.1.6)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not name or len(name) > 253 or any(c.isspace() or c in "/:@" for c in name):
        raise ProvisionError(f"subject alternative name {name!r} is neither an IP address nor a DNS name")
    return x509.DNSName(name)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False,
          sans: tuple[str, ...] = DEFAULT_SANS) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False),
                            critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([_san(n) for n in sans]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Provisioned:
    directory: Path
    passwd: Path
    acl: Path
    credentials: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    conf: Path

    def load_credentials(self) -> dict[str, dict[str, str]]:
        return load_credentials(self.credentials)


def load_credentials(path: Path) -> dict[str, dict[str, str]]:
    """``{principal: {"username", "password", "gateway"?}}`` from a credentials file."""
    try:
        doc = json.loads(Path(path).read_text())
        return {k: {"username": v["username"], "password": v["password"], **v} for k, v in doc["principals"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(f"cannot read credentials file {path}: {exc}") from exc


def auth_conf(out: Path, *, tls_port: int | None = None, listen_host: str = "127.0.0.1",
              require_client_certs: bool = False) -> str:
    """Mosquitto config lines using the provisioned files (append after the plain listener)."""
    text = (f"allow_anonymous false\npassword_file {out / 'passwd'}\nacl_file {out / 'acl'}\n"
            "use_username_as_clientid true\n")
    if tls_port is not None:
        text += (f"listener {tls_port} {listen_host}\ncafile {out / 'ca.crt'}\ncertfile {out / 'server.crt'}\n"
                 f"keyfile {out / 'server.key'}\nrequire_certificate {str(require_client_certs).lower()}\n")
    return text


def provision(out: Path, *, gateways: dict[str, list[str]], client_certs: bool = False,
              tls_port: int | None = None, listen_host: str = "127.0.0.1", sans: tuple[str, ...] = DEFAULT_SANS,
              require_client_certs: bool = False) -> Provisioned:
    """Write password file, ACL, credentials, CA and server certificate (and client certs) into `out`."""
    for gw, devices in gateways.items():
        _check_name(gw)
        for d in devices:
            _check_name(d)
    if not sans:
        raise ProvisionError("the server certificate needs at least one subject alternative name")
    for name in (*sans, listen_host):
        _san(name)
    if require_client_certs and not client_certs:
        raise ProvisionError("requiring client certificates needs them issued: add --client-certs")
    try:
        out.mkdir(parents=True, exist_ok=True)
        principals: dict[str, dict[str, str]] = {}
        for gw, devices in gateways.items():
            principals[gateway_username(gw)] = {"username": gateway_username(gw),
                                                "password": secrets.token_urlsafe(24), "role": "gateway",
                                                "gateway": gw}
            principals[relay_username(gw)] = {"username": relay_username(gw), "password": secrets.token_urlsafe(24),
                                              "role": "relay", "gateway": gw}
            for d in devices:
                seed, pub = consent_key_pair()
                principals[d] = {"username": d, "password": secrets.token_urlsafe(24), "role": "device",
                                 "gateway": gw, "consent_key": seed, "consent_public_key": pub}
        passwd = "".join(f"{p['username']}:{mosquitto_hash(p['password'])}\n" for p in principals.values())
        _write_private(out / "passwd", passwd.encode())
        (out / "acl").write_text(acl_text(gateways))
        for gw in gateways:  # public halves only: the gateway verifies its devices' consent withdrawals with these
            (out / f"consent-keys-{gw}.txt").write_text(
                "# device id, consent public key (base64 Ed25519): written by `wearfed provision`\n"
                + "".join(f"{d} {p['consent_public_key']}\n" for d, p in principals.items()
                          if p.get("role") == "device" and p["gateway"] == gw))
        _write_private(out / "credentials.json", json.dumps({"principals": principals}, indent=1).encode())
        ca_key, server_key = _key(), _key()
        ca = _cert("wearfed provisioning CA", ca_key, None, ca_key, ca=True)
        (out / "ca.crt").write_bytes(_pem(ca))
        _write_key(out / "ca.key", ca_key)
        (out / "server.crt").write_bytes(_pem(_cert(sans[0], server_key, ca.subject, ca_key, server=True,
                                                    sans=tuple(sans))))
        _write_key(out / "server.key", server_key)
        if client_certs:
            (out / "clients").mkdir(exist_ok=True)
            for name in principals:
                k = _key()
                (out / "clients" / f"{name}.crt").write_bytes(_pem(_cert(name, k, ca.subject, ca_key)))
                _write_key(out / "clients" / f"{name}.key", k)
        (out / "mosquitto-auth.conf").write_text(auth_conf(out, tls_port=tls_port, listen_host=listen_host,
                                                           require_client_certs=require_client_certs))
    except OSError as exc:
        raise ProvisionError(f"cannot write provisioning files to {out}: {exc}") from exc
    return Provisioned(out, out / "passwd", out / "acl", out / "credentials.json", out / "ca.crt",
                       out / "server.crt", out / "server.key", out / "mosquitto-auth.conf")
