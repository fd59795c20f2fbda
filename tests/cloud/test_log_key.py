"""Defect 10, the key half (issue 14): the audit log's signing key no longer has to sit unencrypted beside the
database. `wearfed cloud init-log-key` writes a passphrase-encrypted PEM file anywhere; `cloud serve --log-key-file`
opens it with the passphrase from the environment (or a file); `--log-signer` hands signing to an external command
(an HSM or KMS client) whose public key is pinned. Real `wearfed` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cloud.audit import verify_ledger
from cloud.engine import make_engine, make_sessionmaker
from tests.cloud.participants import issue_token
from tests.cloud.server import ServerProcess

PASSPHRASE = "correct horse battery staple"


def _wearfed(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "federation.cli", *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, **(env or {})})


def _init(path: Path, passphrase: str = PASSPHRASE, *extra: str) -> str:
    out = _wearfed("cloud", "init-log-key", "--out", str(path), *extra,
                   env={"WEARFED_LOG_KEY_PASSPHRASE": passphrase})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_init_log_key_writes_an_encrypted_key_and_refuses_weak_or_repeated_use(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "log.pem"
    public = _init(key_file)
    assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes() and oct(key_file.stat().st_mode)[-3:] == "600"
    assert len(public) == 44
    again = _wearfed("cloud", "init-log-key", "--out", str(key_file), env={"WEARFED_LOG_KEY_PASSPHRASE": PASSPHRASE})
    assert again.returncode == 2 and "refusing to replace" in again.stderr
    weak = _wearfed("cloud", "init-log-key", "--out", str(tmp_path / "weak.pem"),
                    env={"WEARFED_LOG_KEY_PASSPHRASE": "short"})
    assert weak.returncode == 2 and "at least 12" in weak.stderr
    # an existing plain key (a running deployment's) re-encrypted: same public key
    from federation.signing import load_or_create_key, public_key_b64

    plain = tmp_path / "state" / "audit-log-key.pem"
    pub = public_key_b64(load_or_create_key(plain))
    assert _init(tmp_path / "moved.pem", PASSPHRASE, "--from", str(plain)) == pub


def test_serve_with_an_encrypted_key_outside_the_state_dir(tmp_path: Path) -> None:
    key_file = tmp_path / "elsewhere" / "log.pem"
    public = _init(key_file)
    db_url, state = f"sqlite:///{tmp_path / 'cloud.db'}", tmp_path / "state"
    args = ["--log-key-file", str(key_file)]
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud.log", extra_args=args,
                           env={"WEARFED_LOG_KEY_PASSPHRASE": PASSPHRASE})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            issue_token(http, "gw-1")
            assert http.get("/v1/log/checkpoint").json()["public_key"] == public
    finally:
        server.stop()
    assert not (state / "audit-log-key.pem").exists()
    report = verify_ledger(make_sessionmaker(make_engine(db_url)), public_key=public)
    assert report.entries >= 3 and report.warnings == []
    # offline create-user signs with the same key
    out = _wearfed("cloud", "create-user", "--db", db_url, "--state-dir", str(state), "--name", "carol", "--role",
                   "auditor", "--log-key-file", str(key_file), env={"WEARFED_LOG_KEY_PASSPHRASE": PASSPHRASE})
    assert out.returncode == 0, out.stderr
    # without the passphrase, or with a wrong one, the cloud does not start, and says why
    for env, fragment in (({"WEARFED_LOG_KEY_PASSPHRASE": ""}, "encrypted"),
                          ({"WEARFED_LOG_KEY_PASSPHRASE": "wrong passphrase!"}, "wrong passphrase")):
        with pytest.raises(RuntimeError, match=fragment):
            ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud-bad.log", extra_args=args, env=env)
    # the state directory's own key is not the pinned one: refused rather than silently forked
    with pytest.raises(RuntimeError, match="signed by key"):
        ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud-other.log")


def test_an_external_signer_command(tmp_path: Path) -> None:
    key_file = tmp_path / "hsm" / "log.pem"
    public = _init(key_file)
    signer = f"{sys.executable} {Path(__file__).parent / 'signer_command.py'} {key_file}"
    env = {"WEARFED_TEST_SIGNER_PASSPHRASE": PASSPHRASE}
    db_url, state = f"sqlite:///{tmp_path / 'cloud.db'}", tmp_path / "state"
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud.log", env=env,
                           extra_args=["--log-signer", signer, "--log-public-key", public])
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            issue_token(http, "gw-1")
    finally:
        server.stop()
    verify_ledger(make_sessionmaker(make_engine(db_url)), public_key=public)
    # a signer whose key is not the configured one is refused at the first signature
    other = _init(tmp_path / "other.pem")
    with pytest.raises(RuntimeError, match="does not verify under its configured public key"):
        ServerProcess(db_url=f"sqlite:///{tmp_path / 'other.db'}", state_dir=tmp_path / "state2",
                      log=tmp_path / "cloud-2.log", env=env,
                      extra_args=["--log-signer", signer, "--log-public-key", other])
