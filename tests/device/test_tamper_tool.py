"""`wearfed device tamper-release`: each kind of tampering is refused by a device with the documented reason."""

from __future__ import annotations

import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from device.model_client import ModelRefused, check_release
from device.profiles import load_profile
from device.tamper import publish_payload, tamper
from federation.signing import public_key_b64
from federation.telemetry import model_topic
from tests.device.releases import payload, release_doc

KEY = Ed25519PrivateKey.generate()


@pytest.mark.parametrize(("kind", "reason"), [("bit-flip", "tampered"), ("unsigned", "unsigned"),
                                              ("forged", "bad-signature"), ("oversized", "oversized"),
                                              ("garbage", "malformed")])
@pytest.mark.parametrize("profile", ["pi-zero-2w", "pi-4"])
def test_each_kind_is_refused_with_its_documented_reason(kind: str, reason: str, profile: str) -> None:
    good = payload(release_doc(KEY, serial=2))
    limit = load_profile(profile).max_model_bytes
    assert check_release(good, public_key=public_key_b64(KEY), max_bytes=limit) is not None
    with pytest.raises(ModelRefused) as info:
        check_release(tamper(good, kind), public_key=public_key_b64(KEY), max_bytes=limit)
    assert info.value.reason == reason


def test_cli_publishes_a_tampered_copy_and_keeps_the_good_retained_release(mosquitto) -> None:  # noqa: ANN001
    good = payload(release_doc(KEY, serial=2))
    publish_payload(good, host=mosquitto.host, port=mosquitto.port, gateway="gw-1", retain=True)
    live: list[tuple[bytes, bool]] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="watcher")
    sub.on_message = lambda _c, _u, msg: live.append((msg.payload, msg.retain))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe(model_topic("gw-1"), qos=1)
    sub.loop_start()
    try:
        deadline = time.time() + 5
        while not live and time.time() < deadline:
            time.sleep(0.05)
        out = subprocess.run([sys.executable, "-m", "federation.cli", "device", "tamper-release", "--gateway", "gw-1",
                              "--kind", "bit-flip", "--broker-host", mosquitto.host,
                              "--broker-port", str(mosquitto.port)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        while len(live) < 2 and time.time() < deadline + 10:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert live[0] == (good, True) and not live[1][1]
    with pytest.raises(ModelRefused, match="tampered"):
        check_release(live[1][0], public_key=public_key_b64(KEY), max_bytes=4_194_304)
