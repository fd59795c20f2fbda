"""Shared fixtures: a real Mosquitto broker and a real uvicorn-served aggregator on free loopback ports."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sim.broker import RunningBroker, find_mosquitto, free_port, start_mosquitto

ADMIN_TOKEN = "test-admin-token"
ENROLL_TOKEN = "test-enroll-token"
POSTGRES_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[RunningBroker]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed (make test installs Debian's package)")
    broker = start_mosquitto(free_port(), tmp_path / "mosquitto")
    yield broker
    broker.stop()


def _postgres_url() -> Iterator[str]:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            name = f"wearfed_test_{uuid.uuid4().hex[:10]}"
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    except Exception as exc:  # no server here: the SQLite half of the suite still runs
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}")
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.db'}"
    else:
        yield from _postgres_url()


@dataclass
class CloudHandle:
    url: str
    app: object
    state_dir: Path
    db_url: str

    @property
    def federation(self):  # noqa: ANN201
        return self.app.state.federation


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:  # noqa: ANN001 - an ASGI app
    """Serve `app` with a real uvicorn on a free loopback port, in a thread of this process; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def cloud(tmp_path: Path, db_url: str) -> Iterator[CloudHandle]:
    """The aggregator app served by a real uvicorn server on a free port (in a thread of this process)."""
    from cloud.app import CloudSettings, create_app

    settings = CloudSettings(db_url=db_url, state_dir=tmp_path / "cloud-state", admin_token=ADMIN_TOKEN,
                             dev_insecure_custodian=True, tick_seconds=0.1)
    app = create_app(settings)
    # Provisioning tokens are one-time; tests that enroll several nodes with ENROLL_TOKEN get it as a
    # 100-use token (cloud tests issue their own one-time tokens through the admin API).
    app.state.federation.issue_enrollment_token("test-fixture", token=ENROLL_TOKEN, uses=100)
    with serve_app(app) as url:
        yield CloudHandle(url, app, settings.state_dir, db_url)
