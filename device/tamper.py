"""Demo and test tool: publish a tampered copy of a gateway's retained model release, to watch devices refuse it.

`wearfed device tamper-release --gateway gw-1 --kind bit-flip` reads the retained release on
``wearfed/v1/<gateway>/model``, alters it without the release key, and publishes it on the same topic
(not retained unless ``--retain``: the good retained release stays for devices that connect later).
Kinds and the refusal reason a device reports (`device.model_client.REASONS`):

    bit-flip     one bit of the .tflite file flipped               -> tampered
    unsigned     the artifact's signature removed                  -> unsigned
    forged       serial raised by 1000 without re-signing          -> bad-signature
    oversized    the file padded to 17 MB (pi-4 takes 16 MB)       -> oversized
    garbage      not JSON                                          -> malformed

An older, genuinely signed release (reason ``stale``) cannot be made without the key: re-publish a payload
captured earlier instead (`publish_payload`).
"""

from __future__ import annotations

import base64
import json
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from device.errors import DeviceError
from federation.telemetry import model_topic

KINDS = ("bit-flip", "unsigned", "forged", "oversized", "garbage")


def tamper(payload: bytes, kind: str) -> bytes:
    """A tampered copy of a relayed release payload (see the module docstring for each kind)."""
    if kind == "garbage":
        return b"{not json"
    doc = json.loads(payload)
    art = doc.get("tflite")
    if not isinstance(art, dict):
        raise DeviceError("the retained release carries no TFLite artifact to tamper with")
    data = bytearray(base64.b64decode(art["tflite"]))
    if kind == "bit-flip":
        data[len(data) // 2] ^= 0x10
        art = {**art, "tflite": base64.b64encode(bytes(data)).decode()}
    elif kind == "unsigned":
        art = {k: v for k, v in art.items() if k != "signature"}
    elif kind == "forged":
        art = {**art, "manifest": {**art["manifest"], "serial": int(art["manifest"]["serial"]) + 1000}}
    elif kind == "oversized":
        art = {**art, "tflite": base64.b64encode(bytes(data) + b"\0" * (17 * 1024 * 1024)).decode()}
    else:
        raise DeviceError(f"unknown tamper kind {kind!r}; kinds: {', '.join(KINDS)}")
    return json.dumps({**doc, "tflite": art}, sort_keys=True, separators=(",", ":")).encode()


def _client(host: str, port: int, username: str | None, password: str | None) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"wearfed-tamper-{time.time_ns()}")
    if username:
        client.username_pw_set(username, password)
    client.connect(host, port)
    client.loop_start()
    return client


def read_retained(*, host: str, port: int, gateway: str, username: str | None = None, password: str | None = None,
                  timeout: float = 5.0) -> bytes:
    """The retained release on the gateway's model topic (DeviceError if there is none within `timeout`)."""
    got: list[bytes] = []
    client = _client(host, port, username, password)
    client.on_message = lambda _c, _u, msg: got.append(msg.payload) if msg.retain else None
    client.subscribe(model_topic(gateway), qos=1)
    deadline = time.time() + timeout
    while not got and time.time() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    if not got:
        raise DeviceError(f"no retained release on {model_topic(gateway)} within {timeout}s")
    return got[0]


def publish_payload(payload: bytes, *, host: str, port: int, gateway: str, retain: bool = False,
                    username: str | None = None, password: str | None = None) -> None:
    """Publish `payload` on the gateway's model topic (QoS 1) and wait for the broker's acknowledgement."""
    client = _client(host, port, username, password)
    info = client.publish(model_topic(gateway), payload, qos=1, retain=retain)
    info.wait_for_publish(timeout=10)
    client.loop_stop()
    client.disconnect()
    if not info.is_published():
        raise DeviceError(f"broker did not acknowledge the publish on {model_topic(gateway)}")
