"""Test helpers for hierarchical aggregation: a real `wearfed region serve` subprocess, a region enrolled with a key
the test holds (to play a compromised region), and region aggregates built by hand."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import ckks, region
from federation.signing import public_key_b64
from federation.tls import ServerFiles, tls_context
from tests.cloud.participants import issue_token
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def region_token(http: httpx.Client, region_id: str) -> str:
    """A one-time enrollment token for a region (requested by the admin, approved by compliance)."""
    return issue_token(http, region_id, kind="region")


def enroll_region(http: httpx.Client, region_id: str, key: Ed25519PrivateKey | None = None) -> Ed25519PrivateKey:
    key = key or Ed25519PrivateKey.generate()
    resp = http.post("/v1/regions", json={"region_id": region_id, "public_key": public_key_b64(key),
                                          "token": region_token(http, region_id)})
    assert resp.status_code == 201, resp.text
    return key


def wearfed(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


@contextlib.contextmanager
def relay_process(tmp: Path, http: httpx.Client, cloud_url: str, region_id: str, *, members: list[str] | None = None,
                  flush_after: float = 30.0, port: int | None = None,
                  tls: ServerFiles | None = None) -> Iterator[SimpleNamespace]:
    """A real `wearfed region serve` process (enrolled with a fresh token at its first start); yields its `url` and
    `proc`. With `tls`: it serves https with that certificate (checked here against that CA)."""
    port = port or free_port()
    args = ["region", "serve", "--id", region_id, "--cloud", cloud_url, "--state-dir", str(tmp / region_id),
            "--enroll-token", region_token(http, region_id), "--port", str(port), "--flush-after", str(flush_after),
            "--log-level", "warning"]
    if members:
        args += ["--members", ",".join(members)]
    if tls is not None:
        args += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    log = (tmp / f"{region_id}.log").open("a")
    proc = subprocess.Popen([sys.executable, "-m", "federation.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    verify = tls_context(tls.ca) if tls else True
    try:
        deadline = time.time() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"relay {region_id} exited {proc.returncode}: "
                                     f"{(tmp / f'{region_id}.log').read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", verify=verify).json().get("status") == "ok":
                    break
            if time.time() > deadline:
                raise AssertionError(f"relay {region_id} did not start")
            time.sleep(0.2)
        yield SimpleNamespace(url=url, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def blob_of(body: dict) -> bytes:
    return base64.b64decode(body["ciphertext"])


def aggregate_body(key: Ed25519PrivateKey, region_id: str, round_id: int, members: list[dict],
                   summands: list[bytes] | None = None, *, ctx=None, aggregate: bytes | None = None) -> dict:  # noqa: ANN001
    """A region aggregate of `members` (their submission bodies), signed with `key`; what is summed is `summands`
    (default: the members' own ciphertexts), or the raw `aggregate` bytes."""
    if aggregate is None:
        ordered = sorted(members, key=lambda b: b["envelope"]["participant"])
        blobs = summands if summands is not None else [blob_of(m) for m in ordered]
        aggregate = ckks.sum_encrypted(ctx, blobs)
    doc = region.statement(round_id=round_id, region=region_id, aggregate=aggregate,
                           contributors={m["envelope"]["participant"]: m["envelope"]["ciphertext_sha256"]
                                         for m in members})
    return {"statement": doc, "signature": region.sign_statement(key, doc),
            "members": [{"envelope": m["envelope"], "signature": m["signature"]} for m in members],
            "aggregate": base64.b64encode(aggregate).decode()}


def inputs_body(key: Ed25519PrivateKey, region_id: str, round_id: int, sha: str, inputs: dict[str, bytes]) -> dict:
    doc = region.inputs_doc(round_id=round_id, region=region_id, aggregate_sha256=sha, inputs=inputs)
    return {"aggregate_sha256": sha, "signature": region.sign_inputs(key, doc),
            "inputs": {p: base64.b64encode(b).decode() for p, b in inputs.items()}}
