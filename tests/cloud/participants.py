"""Test helpers: a participant that enrolls, takes part in secure aggregation and builds (optionally tampered) signed
submissions; round helpers that let the enrolled fake nodes answer each phase; staff."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
import weakref

import httpx
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from federation import ckks, dp_accounting, model, request_auth, secagg
from federation.checkpoint import Checkpoint
from federation.node_signals import WITNESS_DOMAIN, signed
from federation.signing import public_key_b64, sign
from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
COMPLIANCE = {"Authorization": f"Bearer {COMPLIANCE_TOKEN}"}  # approves what the admin requests (two-person rules)
STEP = (1.0, 0.1, 20)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def approve(client: httpx.Client, request: httpx.Response, *, approver: dict = COMPLIANCE) -> dict:
    """Approve a two-person request (202) as a second person; returns the request's one-time secret."""
    assert request.status_code == 202, request.text
    doc = request.json()
    resp = client.post(f"/v1/approvals/{doc['id']}/approve", headers=approver)
    assert resp.status_code == 200 and resp.json()["state"] == "approved", resp.text
    return doc.get("secret") or {}


def issue_token(client: httpx.Client, participant_id: str | None = None, **extra: object) -> str:
    resp = client.post("/v1/enrollment-tokens", json={"participant_id": participant_id, **extra}, headers=ADMIN)
    return approve(client, resp)["token"]


def create_user(client: httpx.Client, name: str, role: str) -> dict:
    resp = client.post("/v1/users", json={"name": name, "role": role}, headers=ADMIN)
    return bearer(approve(client, resp)["token"])


_NODES: weakref.WeakSet[FakeNode] = weakref.WeakSet()  # every fake node, so round helpers can drive them
DROP_POINTS = ("advertise", "share", "input", "consistency")


class FakeNode:
    """Speaks the real wire protocol with real keys, real secure aggregation (federation.secagg) and real CKKS;
    trains nothing (updates are given).

    `offline`: takes no part in secure aggregation at all; `drop_after`: stops answering after that phase
    (advertise, share, input, consistency), as a crashed participant would."""

    def __init__(self, client: httpx.Client, participant_id: str, *, token: str | None = None) -> None:
        self.client = client
        self.id = participant_id
        self.key = Ed25519PrivateKey.generate()
        self.token = token if token is not None else issue_token(client, participant_id)
        self.history: list[tuple[float, float, int]] = []
        self.enrolled = False
        self.offline = False
        self.drop_after: str | None = None
        self.sessions: dict[int, secagg.ParticipantSession] = {}
        _NODES.add(self)

    def enroll(self) -> httpx.Response:
        resp = self.client.post("/v1/participants", json={"participant_id": self.id, "kind": "gateway",
                                                           "public_key": public_key_b64(self.key),
                                                           "token": self.token})
        self.enrolled = self.enrolled or resp.status_code == 201
        return resp

    # -- secure aggregation --------------------------------------------------------------------------------
    def session(self, round_id: int) -> secagg.ParticipantSession:
        if round_id not in self.sessions:
            self.sessions[round_id] = secagg.ParticipantSession(round_id=round_id, participant=self.id)
        return self.sessions[round_id]

    def view(self, round_id: int) -> httpx.Response:
        req = secagg.view_request(self.key, round_id=round_id, participant=self.id, at=time.time())
        return self.client.post(f"/v1/rounds/{round_id}/secagg/view", json=req)

    def advertise(self, round_id: int) -> httpx.Response:
        return self.client.post(f"/v1/rounds/{round_id}/secagg/keys", json=self.session(round_id).advert(self.key))

    def share(self, round_id: int, view: dict) -> httpx.Response:
        return self.client.post(f"/v1/rounds/{round_id}/secagg/shares",
                                json=self.session(round_id).shares(view, self.key))

    def sign_view(self, round_id: int, view: dict) -> httpx.Response:
        return self.client.post(f"/v1/rounds/{round_id}/secagg/consistency",
                                json=self.session(round_id).consistency(view, self.key))

    def reveal(self, round_id: int, view: dict) -> httpx.Response:
        return self.client.post(f"/v1/rounds/{round_id}/secagg/unmask",
                                json=self.session(round_id).unmask(view, self.key))

    def _stopped(self, phase: str) -> bool:
        """True if this node dropped before answering `phase`."""
        if self.offline:
            return True
        order = ("advertise", "share", "input", "consistency", "unmask")
        return self.drop_after is not None and order.index(phase) > order.index(self.drop_after)

    def step(self, round_id: int) -> str | None:
        """Answer the round's current secure-aggregation phase if this node should; the phase answered."""
        resp = self.view(round_id)
        if resp.status_code != 200:
            return None
        view = resp.json()
        phase, sent = view["phase"], view["sent"]
        if phase not in ("advertise", "share", "consistency", "unmask") or phase in sent or self._stopped(phase):
            return None
        members = [a["participant"] for a in view["adverts"]]
        if phase == "share" and self.id not in members:
            return None
        if phase == "consistency" and self.id not in (view["u3"] or []):
            return None
        if phase == "unmask" and self.id not in [c["participant"] for c in view["consistency"]]:
            return None
        act = {"advertise": lambda: self.advertise(round_id), "share": lambda: self.share(round_id, view),
               "consistency": lambda: self.sign_view(round_id, view), "unmask": lambda: self.reveal(round_id, view)}
        resp = act[phase]()
        assert resp.status_code == 200, (self.id, phase, resp.text)
        return phase

    def masked_blob(self, round_id: int, weighted: np.ndarray, ctx) -> bytes:  # noqa: ANN001
        """The update masked for this round (unmasked residues if this node takes no part in it)."""
        resp = self.view(round_id) if round_id in self.sessions else None
        if resp is None or resp.status_code != 200 or resp.json()["phase"] != "input":
            return ckks.encrypt_residues(ctx, secagg.quantise(weighted))
        return self.sessions[round_id].masked_blob(resp.json(), weighted, ctx)

    # -- submissions -----------------------------------------------------------------------------------------
    def submission(self, round_id: int, delta: np.ndarray, *, n_samples: int, base_version: int = 0,
                   key: Ed25519PrivateKey | None = None, step: tuple[float, float, int] = STEP,
                   history: list | None = None, understate: float = 0.0, accountant: str = "rdp",
                   region: str | None = None) -> dict:
        ctx = ckks.load_context(self.client.get("/v1/context").content)
        blob = self.masked_blob(round_id, ckks.weighted_update(delta, n_samples), ctx)
        hist = [*self.history, step] if history is None else history
        eps = dp_accounting.epsilon(hist, accountant=accountant)
        eps_round = dp_accounting.epsilon([step], accountant=accountant)
        env = {"round": round_id, "participant": self.id, "n_samples": n_samples,
               "base_model_version": base_version, "ciphertext_sha256": hashlib.sha256(blob).hexdigest(),
               "idempotency_key": uuid.uuid4().hex,
               "dp": {"noise_multiplier": step[0], "sample_rate": step[1], "steps": step[2],
                      "accountant": accountant, "delta": 1e-5, "unit": "window", "epsilon_round": eps_round,
                      "epsilon_cumulative": eps - understate, "history": [list(h) for h in hist]}}
        if region is not None:  # sent through this region relay (federation.region)
            env["region"] = region
        return {"envelope": env, "signature": sign(key or self.key, env),
                "ciphertext": base64.b64encode(blob).decode()}

    def sign(self, envelope: dict) -> str:
        return sign(self.key, envelope)

    def signed_get(self, path: str) -> httpx.Response:
        """A read signed as this participant (federation.request_auth)."""
        header = request_auth.header(self.key, self.id, method="GET", path=path)
        return self.client.get(path, headers={"Authorization": header})

    def acknowledge(self, *, tree_size: int | None = None, root: str | None = None) -> httpx.Response:
        """What an honest node's log witness does after a check (gateway/witness.py): acknowledge the newest signed
        checkpoint (or the given size and root), signed."""
        if tree_size is None:
            cp = Checkpoint.from_body(self.client.get("/v1/log/checkpoint").json()["body"].encode())
            tree_size, root = cp.tree_size, root or cp.root_hash.hex()
        body = {"participant": self.id, "tree_size": tree_size, "root": root, "checked_at": time.time()}
        return self.client.post("/v1/log/witness", json=signed(self.key, body, WITNESS_DOMAIN))

    def submit(self, round_id: int, body: dict) -> httpx.Response:
        resp = self.client.post(f"/v1/rounds/{round_id}/updates", json=body)
        if resp.status_code == 200 and not resp.json()["duplicate"]:
            self.history = [tuple(h) for h in body["envelope"]["dp"]["history"]]
        return resp


def fake_nodes(client: httpx.Client, nodes: list[FakeNode] | None = None) -> list[FakeNode]:
    """The enrolled fake nodes talking to this client's cloud (or `nodes`), in id order."""
    pool = nodes if nodes is not None else [n for n in list(_NODES) if n.client is client and n.enrolled]
    return sorted(pool, key=lambda n: n.id)


def drive(client: httpx.Client, round_id: int, *, until: tuple[str, ...], nodes: list[FakeNode] | None = None,
          timeout: float = 30) -> dict:
    """Let the fake nodes answer secure aggregation until the round reaches a phase or state in `until`."""
    deadline = time.time() + timeout
    report: dict = {}
    while time.time() < deadline:
        report = client.get(f"/v1/rounds/{round_id}", headers=ADMIN).json()
        if report["state"] in until or report.get("secagg_phase") in until or report["state"] != "collecting":
            return report
        acted = [n.step(round_id) for n in fake_nodes(client, nodes)]
        if not any(acted):
            time.sleep(0.05)
    raise AssertionError(f"round {round_id} never reached {until}: {report}")


def random_delta(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.01, model.N_PARAMS)


def open_round(client: httpx.Client, *, quorum: int = 3, deadline_s: float = 600, headers: dict = ADMIN,
               nodes: list[FakeNode] | None = None, inputs: bool = True) -> int:
    """Open a round; with `inputs`, the fake nodes advertise keys and share seeds until it takes masked inputs. The
    default deadline is long so a loaded machine never fails a round by the clock; tests of deadlines expire() it."""
    # two local epochs: the fake nodes' STEP (q 0.1, 20 steps) is what an honest node plans for them
    # (cloud/dp_plausibility.py: steps = epochs / q)
    resp = client.post("/v1/rounds", json={"quorum": quorum, "deadline_s": deadline_s, "local_epochs": 2},
                       headers=headers)
    assert resp.status_code == 201, resp.text
    round_id = resp.json()["round"]
    if inputs:
        report = drive(client, round_id, until=("input",), nodes=nodes)
        assert report.get("secagg_phase") == "input", report
    return round_id


def wait_state(client: httpx.Client, round_id: int, states: tuple[str, ...], timeout: float = 30,
               nodes: list[FakeNode] | None = None) -> dict:
    """Wait for a round state; meanwhile the fake nodes answer the consistency check and unmasking."""
    deadline = time.time() + timeout
    report: dict = {}
    while time.time() < deadline:
        report = client.get(f"/v1/rounds/{round_id}", headers=ADMIN).json()
        if report["state"] in states:
            return report
        acted = []
        if report["state"] == "collecting" and report.get("secagg_phase") in ("consistency", "unmask"):
            acted = [n.step(round_id) for n in fake_nodes(client, nodes)]
        if not any(acted):
            time.sleep(0.05)
    raise AssertionError(f"round {round_id} never reached {states}: {report}")


def assert_reason(resp: httpx.Response, status: int, fragment: str) -> None:
    assert resp.status_code == status, resp.text
    assert fragment in str(resp.json()["detail"]), resp.json()


def run_round(client: httpx.Client, nodes: list[FakeNode], *, seed: int = 0, n_samples: int = 50) -> dict:
    """Open a round as admin, have every node submit, and wait until it completes."""
    base = client.get("/v1/models/promoted").json()["version"]
    round_id = open_round(client)
    for i, node in enumerate(nodes):
        body = node.submission(round_id, random_delta(seed + i), n_samples=n_samples, base_version=base)
        resp = node.submit(round_id, body)
        assert resp.status_code == 200, resp.text
    return wait_state(client, round_id, ("completed", "failed"))


def expire(cloud, round_id: int) -> None:  # noqa: ANN001
    """Move a round's deadline (the end of its input phase) into the past, with no race against a real clock. Through
    the store's transaction, so the change is bound to the audit log like any other (`audit verify` stays clean)."""
    from datetime import timedelta

    from cloud.db import Round, utcnow

    with cloud.units.store.tx() as s:
        s.get(Round, round_id).deadline_at = utcnow() - timedelta(seconds=1)


def audit_kinds(cloud) -> list[str]:  # noqa: ANN001
    return [e["kind"] for e in cloud.audit_entries()]


def expire_phase(cloud, round_id: int) -> None:  # noqa: ANN001
    """End the current secure-aggregation phase now (its deadline into the past; the next tick closes it), through the
    store's transaction like any other change."""
    from datetime import timedelta

    from cloud.db import SecAggRound, utcnow

    with cloud.units.store.tx() as s:
        s.get(SecAggRound, round_id).phase_deadline_at = utcnow() - timedelta(seconds=1)
