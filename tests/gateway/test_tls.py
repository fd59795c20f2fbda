"""TLS on the device path (issue 14 item 14): the gateway's ingest and relay reach a real Mosquitto TLS listener
written by `wearfed provision`, with `--broker-ca-file` (and client certificates where the listener demands them), and
the server certificate carries the listener's configured names (not only localhost).

Real Mosquitto with the provisioned password file, ACL and TLS listener; a real `wearfed gateway ingest`
subprocess; a device publishing over TLS with its own login; the real ModelRelay over TLS.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509

from device.provision import load_credentials, provision
from federation.cli import build_parser
from federation.telemetry import model_topic, readings_topic
from gateway.cli import _ingest_config
from gateway.cloud_client import CloudClient
from gateway.relay import ModelRelay
from tests.conftest import serve_app
from tests.gateway.test_ingest_crash import status, wait
from tests.gateway.test_relay import FakeCloud
from tests.gateway.test_relay_principal import DEV, batch, device_client, provisioned_broker, start_ingest


def _tls(out: Path, who: str | None = None) -> dict:
    kw: dict = {"ca_certs": str(out / "ca.crt"), "cert_reqs": ssl.CERT_REQUIRED,
                "tls_version": ssl.PROTOCOL_TLS_CLIENT}
    if who:
        kw |= {"certfile": str(out / "clients" / f"{who}.crt"), "keyfile": str(out / "clients" / f"{who}.key")}
    return kw


def _relay(state: Path, argv: list[str]) -> ModelRelay:
    args = build_parser().parse_args(["gateway", "ingest", "--id", "gw-1", "--state-dir", str(state), *argv])
    return ModelRelay("gw-1", state.parent / "relay", access=_ingest_config(args).relay_access())


def _retained_over_tls(out: Path, port: int, *, mutual: bool) -> dict:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    d = load_credentials(out / "credentials.json")["gw-1-dev002"]
    got: list[bytes] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gw-1-dev002")
    c.username_pw_set(d["username"], d["password"])
    c.tls_set(**_tls(out, "gw-1-dev002" if mutual else None))
    c.on_message = lambda _c, _u, m: got.append(m.payload)
    c.connect("127.0.0.1", port)
    c.subscribe(model_topic("gw-1"), qos=1)
    c.loop_start()
    wait(lambda: bool(got), "the retained release over TLS")
    c.loop_stop()
    c.disconnect()
    return json.loads(got[0])


@pytest.mark.parametrize("mutual", [False, True], ids=["server-tls", "mutual-tls"])
def test_ingest_and_relay_over_the_provisioned_tls_listener(tmp_path: Path, mutual: bool) -> None:
    broker, out, tls_port = provisioned_broker(tmp_path, *(["--require-client-certs"] if mutual else []))
    state = tmp_path / "gw-1"
    state.mkdir()
    argv = ["--broker-port", str(tls_port), "--credentials", str(out / "credentials.json"),
            "--broker-ca-file", str(out / "ca.crt")]
    if mutual:
        argv += ["--broker-cert-file", str(out / "clients" / "gateway-gw-1.crt"), "--broker-key-file",
                 str(out / "clients" / "gateway-gw-1.key"), "--relay-cert-file",
                 str(out / "clients" / "gateway-gw-1-relay.crt"), "--relay-key-file",
                 str(out / "clients" / "gateway-gw-1-relay.key")]
    gw = start_ingest(state, tls_port, argv[2:])
    cloud = FakeCloud()
    dev = None
    try:
        wait(lambda: status(state).get("subscribed"), "the gateway to subscribe over TLS")
        dev = device_client(out, tls_port, **_tls(out, DEV if mutual else None))
        for b in range(5):
            info = dev.publish(readings_topic("gw-1", DEV), batch(b), qos=1)
            info.wait_for_publish(timeout=10)
            assert info.is_published()
        wait(lambda: status(state).get("ingested") == 20, "readings over TLS")
        relay = _relay(state, argv)
        assert relay.access.tls and relay.access.port == tls_port
        with serve_app(cloud.app()) as cloud.url:
            cloud.add(3)

            async def once() -> None:
                client = CloudClient(cloud.url, attempts=2)
                await relay.relay_current(client)
                await client.aclose()

            asyncio.run(once())
        assert relay.relayed_version == 3 and relay.last_error is None
        assert _retained_over_tls(out, tls_port, mutual=mutual)["manifest"]["version"] == 3
    finally:
        if dev is not None:
            dev.loop_stop()
            dev.disconnect()
        gw.send_signal(signal.SIGTERM)
        gw.wait(timeout=15)
        broker.stop()


def test_a_gateway_trusting_another_ca_or_without_its_certificate_never_connects(tmp_path: Path) -> None:
    broker, out, tls_port = provisioned_broker(tmp_path, "--require-client-certs")
    other = tmp_path / "other"
    provision(other, gateways={"gw-9": ["gw-9-dev001"]})
    try:
        for name, extra in (("wrong-ca", ["--broker-ca-file", str(other / "ca.crt")]),
                            ("no-client-cert", ["--broker-ca-file", str(out / "ca.crt")])):
            state = tmp_path / name
            state.mkdir()
            gw = start_ingest(state, tls_port, ["--credentials", str(out / "credentials.json"), *extra])
            try:
                time.sleep(4.0)
                assert status(state).get("subscribed") is False and status(state).get("ingested") == 0
            finally:
                gw.send_signal(signal.SIGTERM)
                gw.wait(timeout=15)
    finally:
        broker.stop()


def test_provisioned_listener_address_and_certificate_names_are_configurable(tmp_path: Path) -> None:
    broker, out, tls_port = provisioned_broker(tmp_path, "--san", "broker.wearfed.test", "--san", "10.20.30.40",
                                               "--listen-host", "0.0.0.0")
    try:
        cert = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["broker.wearfed.test"]
        assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.20.30.40"]
        assert f"listener {tls_port} 0.0.0.0" in (out / "mosquitto-auth.conf").read_text()
        ctx = ssl.create_default_context(cafile=str(out / "ca.crt"))
        with (socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw,  # bound beyond loopback too
              ctx.wrap_socket(raw, server_hostname="broker.wearfed.test") as tls):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        with (socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw,  # a name not in the certificate
              pytest.raises(ssl.SSLCertVerificationError, match="match")):
            ctx.wrap_socket(raw, server_hostname="localhost")
    finally:
        broker.stop()


def test_bad_tls_flags_exit_2(tmp_path: Path) -> None:
    from federation.cli import main

    assert main(["gateway", "ingest", "--id", "gw-1", "--state-dir", str(tmp_path), "--broker-ca-file",
                 str(tmp_path / "missing.crt")]) == 2
    assert main(["gateway", "ingest", "--id", "gw-1", "--state-dir", str(tmp_path), "--broker-cert-file",
                 str(tmp_path)]) == 2
