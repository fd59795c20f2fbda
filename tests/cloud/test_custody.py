"""Key custody: init-keys, Shamir k-of-n shares, AEAD sealing, unsealing a running server share by share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from cloud import custody
from cloud.custodian import Custodian
from federation import ckks
from tests.cloud.participants import ADMIN, FakeNode, assert_reason, create_user, open_round, random_delta, wait_state
from tests.cloud.server import ServerProcess


def _init(state: Path, n: int = 5, k: int = 3) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "federation.cli", "cloud", "init-keys", "--state-dir", str(state),
                          "--custodians", str(n), "--threshold", str(k)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shares = [line for line in out.stdout.splitlines() if line.startswith(custody.SHARE_PREFIX)]
    assert len(shares) == n and len(set(shares)) == n
    return shares


def test_init_keys_seals_the_secret_and_any_k_shares_open_it(tmp_path: Path) -> None:
    shares = _init(tmp_path)
    sealed = custody.load_sealed(tmp_path)
    public = custody.load_public(tmp_path)
    assert not ckks.load_context(public).has_secret_key()
    with pytest.raises(ckks.CKKSError):
        ckks.load_context(sealed.ciphertext)  # sealed: not a readable context
    for subset in (shares[:3], shares[2:], [shares[0], shares[2], shares[4]], shares):
        c = Custodian.from_shares(sealed, subset)
        assert c.mode == "sealed-shamir" and custody.key_id_of(c.public_context_bytes) == sealed.key_id
        blob = ckks.encrypt(ckks.load_context(public), np.arange(4.0))
        np.testing.assert_allclose(ckks.decrypt(c._secret, blob), np.arange(4.0), atol=1e-4)
    with pytest.raises(custody.CustodyError, match="3 needed"):
        Custodian.from_shares(sealed, shares[:2])
    with pytest.raises(custody.CustodyError, match="3 needed"):
        Custodian.from_shares(sealed, [shares[0], shares[0], shares[1]])  # the same share twice counts once
    # a second init-keys must not replace the federation's keys
    again = subprocess.run([sys.executable, "-m", "federation.cli", "cloud", "init-keys", "--state-dir",
                            str(tmp_path), "--custodians", "3", "--threshold", "2"], capture_output=True, text=True)
    assert again.returncode == 2 and "refusing to replace" in again.stderr


def test_wrong_tampered_or_foreign_shares_are_refused(tmp_path: Path) -> None:
    shares = _init(tmp_path / "a")
    foreign = _init(tmp_path / "b")
    sealed = custody.load_sealed(tmp_path / "a")
    with pytest.raises(custody.CustodyError, match="key set"):
        Custodian.from_shares(sealed, [shares[0], shares[1], foreign[2]])
    typo = shares[2][:-12] + ("0" if shares[2][-12] != "0" else "1") + shares[2][-11:]
    with pytest.raises(custody.CustodyError, match="checksum"):
        Custodian.from_shares(sealed, [shares[0], shares[1], typo])
    # a forged share with a valid checksum (an insider making one up) reconstructs a wrong key: AEAD fails
    parts = shares[2].split("-")
    value = bytes.fromhex(parts[3])
    forged = custody.format_share(parts[1], int(parts[2]), bytes([value[0] ^ 1]) + value[1:])
    with pytest.raises(custody.CustodyError, match="do not reconstruct"):
        Custodian.from_shares(sealed, [shares[0], shares[1], forged])
    # a tampered sealed blob (or its k-of-n parameters) fails authentication
    flipped = custody.Sealed(**{**sealed.__dict__, "ciphertext": bytes([sealed.ciphertext[0] ^ 1])
                                + sealed.ciphertext[1:]})
    with pytest.raises(custody.CustodyError, match="do not reconstruct"):
        Custodian.from_shares(flipped, shares[:3])
    relabelled = custody.Sealed(**{**sealed.__dict__, "threshold": 2})
    with pytest.raises(custody.CustodyError):
        Custodian.from_shares(relabelled, shares[:3])
    with pytest.raises(custody.CustodyError):
        custody.init_keys(tmp_path / "c", custodians=2, threshold=3)


def test_sealed_server_waits_in_decrypting_until_k_custodians_unseal_it(tmp_path: Path, db_url: str) -> None:
    state = tmp_path / "state"
    shares = _init(state)
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud.log", dev=False)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            health = http.get("/healthz").json()
            assert health["custodian_state"] == "sealed" and health["warning"] is None
            assert http.get("/v1/context").content == custody.load_public(state)
            nodes = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
            for n in nodes:
                assert n.enroll().status_code == 201
            rid = open_round(http)
            for i, n in enumerate(nodes):
                assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=10)).status_code == 200
            assert wait_state(http, rid, ("decrypting",))["state"] == "decrypting"
            auditor = create_user(http, "aud", "auditor")
            compliance = create_user(http, "carol", "compliance_officer")
            assert http.post("/v1/custodian/unseal", json={"share": shares[0]}, headers=auditor).status_code == 403
            assert_reason(http.post("/v1/custodian/unseal", json={"share": "wfshare1-00-1-00-00000000"},
                                    headers=compliance), 400, "not")
            first = http.post("/v1/custodian/unseal", json={"share": shares[0]}, headers=compliance).json()
            assert first == {"state": "sealed", "threshold": 3, "shares_received": 1}
            assert http.post("/v1/custodian/unseal", json={"share": shares[3]}, headers=ADMIN).status_code == 200
            (tmp_path / "share.txt").write_text(shares[4] + "\n")
            cli = subprocess.run([sys.executable, "-m", "federation.cli", "cloud", "unseal", "--url", server.url,
                                  "--shares-file", str(tmp_path / "share.txt")], capture_output=True, text=True,
                                 timeout=120, env={"WEARFED_TOKEN": "test-admin-token", "PATH": ""})
            assert cli.returncode == 0, cli.stdout + cli.stderr
            assert http.get("/healthz").json()["custodian"] == "sealed-shamir"
            assert wait_state(http, rid, ("completed", "failed"))["state"] == "completed"
            again = http.post("/v1/custodian/unseal", json={"share": shares[1]}, headers=compliance)
            assert_reason(again, 409, "already unsealed")
            kinds = [e["kind"] for e in http.get("/v1/audit/entries", headers=compliance).json()]
    finally:
        server.stop()
    assert kinds.count("custodian.share_received") == 3 and "custodian.unsealed" in kinds
    assert kinds.index("custodian.unsealed") < kinds.index("aggregate.decrypted")


def test_custodian_refuses_a_swapped_aggregate_and_the_refusal_is_audited(tmp_path: Path) -> None:
    from sqlalchemy import update

    from cloud.db import Round, Update
    from cloud.engine import make_engine, make_sessionmaker

    state, db_url = tmp_path / "state", f"sqlite:///{tmp_path / 'cloud.db'}"
    shares = _init(state)
    server = ServerProcess(db_url=db_url, state_dir=state, log=tmp_path / "cloud.log", dev=False)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            nodes = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
            for n in nodes:
                assert n.enroll().status_code == 201
            rid = open_round(http)
            for i, n in enumerate(nodes):
                assert n.submit(rid, n.submission(rid, random_delta(i), n_samples=10)).status_code == 200
            wait_state(http, rid, ("decrypting",))
            # whoever controls the aggregator's database swaps the aggregate for gw-1's lone update
            sessions = make_sessionmaker(make_engine(db_url))
            with sessions.begin() as s:
                lone = s.query(Update).filter_by(round_id=rid, participant="gw-1").one().ciphertext
                s.execute(update(Round).where(Round.id == rid).values(aggregate=lone))
            for share in shares[:3]:
                assert http.post("/v1/custodian/unseal", json={"share": share}, headers=ADMIN).status_code == 200
            report = wait_state(http, rid, ("completed", "failed"))
            compliance = create_user(http, "carol", "compliance_officer")
            entries = http.get("/v1/audit/entries", headers=compliance).json()
    finally:
        server.stop()
    assert report["state"] == "failed" and "custodian refused" in report["failure_reason"]
    refusals = [e for e in entries if e["kind"] == "custodian.refused"]
    assert len(refusals) == 1 and "not the sum" in refusals[0]["detail"]["reason"]
    assert not [e for e in entries if e["kind"] == "aggregate.decrypted"]
