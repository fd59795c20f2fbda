"""Issue 14 item 8 with a real `wearfed device run` hub over Mosquitto: a release with NaN in its manifest and a
deeply nested JSON document are refusals, counted under "malformed" with a reason on the retained status topic.

Before the fix both raised inside the message handler (ValueError from canonical JSON of a NaN manifest,
RecursionError from json.loads) and were dropped with a logged handler error: not counted, not reported.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation.clock import DEFAULT_SIM_START
from federation.signing import public_key_b64
from sim.processes import wait_until
from tests.device.releases import payload, release_doc
from tests.device.test_model_release_mqtt import publish, retained_status

DEV = "gw-1-dev001"


def test_nan_manifest_and_deep_json_are_counted_refusals_on_the_status_topic(mosquitto, tmp_path: Path) -> None:  # noqa: ANN001
    key = Ed25519PrivateKey.generate()
    cmd = [sys.executable, "-m", "federation.cli", "device", "run", "--device-id", DEV, "--gateway", "gw-1",
           "--profile", "pi-zero-2w", "--broker-port", str(mosquitto.port), "--days", "0.02", "--accel", "3600",
           "--sim-start", str(DEFAULT_SIM_START), "--wall-start", str(time.time() + 1), "--linger",
           "--release-key", public_key_b64(key), "--state-dir", str(tmp_path / "dev")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: retained_status(mosquitto, DEV).get("state") == "done", timeout=60,
                   what="the hub to send its trace and linger")
        nan_doc = release_doc(key, serial=2)
        nan_doc["tflite"]["manifest"]["max_abs_diff_mgdl"] = float("nan")  # json.dumps writes the literal NaN
        publish(mosquitto, json.dumps(nan_doc).encode())
        wait_until(lambda: retained_status(mosquitto, DEV).get("model_refusals") == {"malformed": 1}, timeout=20,
                   what="the NaN release to be counted")
        publish(mosquitto, b"[" * 200_000 + b"]" * 200_000)
        wait_until(lambda: retained_status(mosquitto, DEV).get("model_refusals") == {"malformed": 2}, timeout=20,
                   what="the deeply nested release to be counted")
        status = retained_status(mosquitto, DEV)
        assert status["last_refusal"]["reason"] == "malformed" and "nested" in status["last_refusal"]["detail"]
        assert status["model"] is None
        publish(mosquitto, payload(release_doc(key, serial=3)))  # and a good release still loads afterwards
        wait_until(lambda: (retained_status(mosquitto, DEV).get("model") or {}).get("serial") == 3, timeout=30,
                   what="a valid release to load after the refusals")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert "Traceback" not in out, out[-3000:]
