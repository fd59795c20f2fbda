"""A region relay's HTTP server (`wearfed region relay`): participants post submissions to it exactly as they
would to the cloud; `preflight` enrolls and checks the cloud before the server starts."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, HTTPException, Request

from cloud.region_relay import RegionRelay
from cloud.region_relay_config import Refused, RelayConfig
from federation.responses import SubmissionAck

log = logging.getLogger("cloud.region_relay")


async def preflight(cfg: RelayConfig) -> None:
    """Enroll (first start) and check the cloud's context and the region's read before serving, so bad flags, a
    bad token or an unreachable cloud are one clear error instead of a failed server start."""
    relay = RegionRelay(cfg)
    try:
        await relay.start()
    finally:
        await relay.aclose()


def create_app(cfg: RelayConfig) -> FastAPI:
    """The relay's HTTP API: participants post submissions here exactly as they would to the cloud."""
    relay = RegionRelay(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        await relay.start()

        async def ticker() -> None:
            while True:
                try:
                    await relay.tick()
                except Exception:
                    log.exception("region %s: tick failed", cfg.region_id)
                await asyncio.sleep(0.2)

        task = asyncio.create_task(ticker())
        yield
        task.cancel()
        for rid in list(relay.rounds):  # hand over what was acknowledged before stopping
            with contextlib.suppress(Exception):
                await relay.flush(rid)
        await relay.aclose()

    app = FastAPI(title=f"wearfed region relay {cfg.region_id}", lifespan=lifespan)
    app.state.relay = relay

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok" if relay.ctx is not None else "starting", "region": cfg.region_id}

    @app.get("/v1/status")
    def status() -> dict:
        return relay.status()

    @app.post("/v1/rounds/{round_id}/updates")
    async def submit(round_id: int, request: Request) -> SubmissionAck:
        try:
            return await relay.take(round_id, await request.body())
        except Refused as exc:
            log.warning("region %s: submission to round %s refused: %s", cfg.region_id, round_id, exc.reason)
            raise HTTPException(status_code=exc.status, detail=exc.reason) from exc

    return app
