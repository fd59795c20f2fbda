"""A region relay's link to the cloud: requests retried on transport errors (not a certificate that does not verify)
and 5xx (a 4xx is a `Refused`),
enrollment once (the federation's CKKS key and the cloud's keys pinned from the token's binding, `enrolled.json`
in the state directory), the context checked against the pin, signed reads of the participants' keys, the current
round (cached for a second), and forwarding a signed aggregate, answering the cloud's audit with every input, signed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx

from cloud.region_relay_config import Refused, RelayConfig
from federation import ckks, region, request_auth
from federation.enrollment import check_context, verify_binding
from federation.errors import ConfigError
from federation.responses import Enrolled, PublicRound, RegionAck, refusal_detail
from federation.runtime import Backoff, atomic_write_json
from federation.signing import load_or_create_key, public_key_b64
from federation.tls import certificate_refused, tls_context

RETRY = Backoff(base_s=0.2, cap_s=5.0)


class CloudLink:
    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        self.key = load_or_create_key(cfg.state_dir / "region-key.pem")
        self.http = httpx.AsyncClient(base_url=cfg.cloud_url.rstrip("/"), timeout=60.0,
                                      verify=tls_context(cfg.ca_file))
        self._round_view: tuple[float, PublicRound] | None = None

    async def request(self, method: str, path: str, *, attempts: int = 6, **kwargs: object) -> httpx.Response:
        for attempt in range(attempts):
            try:
                resp = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == attempts - 1 or certificate_refused(exc):
                    raise
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code < 500 or attempt == attempts - 1:
                    raise Refused(resp.status_code, refusal_detail(resp))
            await asyncio.sleep(RETRY.delay(attempt))
        raise AssertionError("unreachable")

    def _signed(self, path: str) -> dict:
        return {"Authorization": request_auth.header(self.key, self.cfg.region_id, method="GET", path=path)}

    async def enroll(self) -> tuple[object, dict]:
        """Enroll once (pinning the federation's CKKS key and the cloud's keys); the context, checked against the
        pin, and the binding."""
        marker = self.cfg.state_dir / "enrolled.json"
        if not marker.exists():
            if not self.cfg.enroll_token:
                raise ConfigError(f"region {self.cfg.region_id} is not enrolled yet ({marker} missing): give its "
                                  "one-time enrollment token (--enroll-token or WEARFED_REGION_TOKEN)")
            body = {"region_id": self.cfg.region_id, "public_key": public_key_b64(self.key),
                    "token": self.cfg.enroll_token}
            answer = Enrolled.model_validate((await self.request("POST", "/v1/regions", json=body)).json())
            verify_binding(self.cfg.enroll_token, answer.binding, answer.binding_mac,
                           expected_key_id=self.cfg.expected_key_id)
            atomic_write_json(marker, {"cloud_url": self.cfg.cloud_url, "public_key": public_key_b64(self.key),
                                       "binding": answer.binding}, indent=1)
        binding = json.loads(marker.read_text())["binding"]
        ctx_bytes = (await self.request("GET", "/v1/context")).content
        ctx = ckks.load_context(ctx_bytes)
        check_context(ctx_bytes, ctx, binding)
        return ctx, binding

    async def participant_keys(self) -> dict[str, str]:
        path = f"/v1/regions/{self.cfg.region_id}/participant-keys"
        return (await self.request("GET", path, headers=self._signed(path))).json()

    async def current_round(self, *, max_age_s: float = 1.0) -> PublicRound | None:
        now = time.monotonic()
        if self._round_view is None or now - self._round_view[0] > max_age_s:
            try:
                view = PublicRound.model_validate((await self.request("GET", "/v1/rounds/current")).json())
            except Refused:
                return None
            self._round_view = (now, view)
        return self._round_view[1]

    async def forward(self, round_id: int, body: dict, inputs: dict[str, bytes]) -> RegionAck:
        """Post one signed aggregate; when the cloud audits it, post every input of it, signed."""
        resp = await self.request("POST", f"/v1/rounds/{round_id}/region-aggregates", json=body)
        ack = RegionAck.model_validate(resp.json())
        if ack.status == "audit":
            sha = body["statement"]["aggregate_sha256"]
            doc = region.inputs_doc(round_id=round_id, region=self.cfg.region_id, aggregate_sha256=sha, inputs=inputs)
            answer = {"aggregate_sha256": sha, "signature": region.sign_inputs(self.key, doc),
                      "inputs": {p: base64.b64encode(b).decode("ascii") for p, b in inputs.items()}}
            RegionAck.model_validate((await self.request(
                "POST", f"/v1/rounds/{round_id}/region-aggregates/{sha}/inputs", json=answer)).json())
        return ack

    async def aclose(self) -> None:
        await self.http.aclose()
