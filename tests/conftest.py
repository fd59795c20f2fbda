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
COMPLIANCE_TOKEN = "test-compliance-token"  # the bootstrapped second person of the two-person rules
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
    def units(self):  # noqa: ANN201 - cloud.assembly.Cloud
        return self.app.state.cloud

    def audit_entries(self, limit: int = 100_000) -> list[dict]:
        return [e.model_dump() for e in self.units.ledgers.audit_entries(limit=limit)]

    def failures(self) -> dict:
        """Write the window's count of unauthenticated/malformed refusals now; its `by_status` ({} if none)."""
        self.app.state.failures.flush_if_due(force=True)
        summaries = [e for e in self.audit_entries() if e["kind"] == "access.failures"]
        return summaries[-1]["detail"]["by_status"] if summaries else {}


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
    from cloud.intrusion_config import RULES, IntrusionConfig
    from cloud.throttle import Limits

    # Functional tests send hundreds of deliberate 401s and 403s from one address (every role x every endpoint): no
    # lockout, no rate limit and no intrusion containment here (the DP report policy still applies);
    # tests/attacks/test_abuse.py and tests/attacks/test_intrusion.py run the cloud with the real defaults.
    settings = CloudSettings(db_url=db_url, state_dir=tmp_path / "cloud-state", admin_token=ADMIN_TOKEN,
                             compliance_token=COMPLIANCE_TOKEN, dev_insecure_custodian=True, tick_seconds=0.1,
                             limits=Limits(requests_per_s=0, auth_failures=10**9),
                             intrusion=IntrusionConfig(**dict.fromkeys(RULES, 10**9), witness_max_age_s=0,
                                                       witness_max_behind=0))
    app = create_app(settings)
    # Provisioning tokens are one-time; tests that enroll several nodes with ENROLL_TOKEN get it as a
    # 100-use token (cloud tests issue their own one-time tokens through the admin API).
    app.state.cloud.participants.issue_enrollment_token("test-fixture", token=ENROLL_TOKEN, uses=100)
    with serve_app(app) as url:
        yield CloudHandle(url, app, settings.state_dir, db_url)


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


def start_chromium(profile: Path, *, width: int = 1440, height: int = 1800):  # noqa: ANN201 - a Selenium WebDriver
    """Debian's Chromium under Selenium with Debian's chromedriver, a fresh profile, nothing downloaded: with the
    driver's path given, Selenium Manager is never run (and SE_OFFLINE forbids it any network)."""
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    """A headless Chromium (Debian's) driven by Selenium, with a fresh profile under the test's tmp_path."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are not installed (make test installs Debian's packages)")
    driver = start_chromium(tmp_path / "chromium-profile")
    yield driver
    driver.quit()


def stop_process(proc, timeout: float = 30.0) -> None:  # noqa: ANN001 - a subprocess.Popen
    """SIGTERM a test's daemon and wait for its graceful stop; SIGKILL it if it does not stop in time."""
    from federation.runtime import terminate

    terminate(proc, timeout=timeout)
