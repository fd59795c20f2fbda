"""Shared fixtures: a real Mosquitto broker and a real uvicorn-served aggregator on free loopback ports."""

from __future__ import annotations

import contextlib
import os
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

# PostgreSQL twins of long tests whose subject is not the database: the same scenario runs on SQLite in the default
# suite, and on PostgreSQL with `-m slow` (what is PostgreSQL's own, pools, replicas, advisory locks, crash recovery,
# custody, stays in the default suite). Each entry is a test function name; its [postgres...] variants become slow.
POSTGRES_TWINS_SLOW = {
    "test_every_single_row_insert_update_delete_is_named",  # 150 s: every column of every row, each verified
    "test_retention_deletes_old_rows_and_audits_counts",
    "test_withdrawal_mid_stream_purges_everything_and_is_audited",
    "test_real_cloud_export_reaches_a_device_through_the_relay",
    "test_promotion_exports_and_signs_and_rollback_serves_the_previous_model",
    "test_a_restarted_cloud_serves_what_it_signed_and_resumes_an_unsigned_head",
    "test_disagreement_refuses_the_release_and_is_audited",
    "test_a_burst_of_acl_denials_revokes_the_device_and_alerts_the_cloud",
    "test_patient_withdrawal_excludes_and_is_audited",
    "test_round_with_a_node_at_its_privacy_cap",
    "test_a_round_through_two_region_relays_and_one_direct_participant_equals_fedavg",
    "test_integers_past_the_database_range_never_give_500",
    "test_accuracy_gate_blocks_a_regression_and_rollback_is_one_step",
}


def pytest_configure(config: pytest.Config) -> None:
    # A promotion, or a relay's first ask, starts the cloud's TFLite export child (litert-torch, tens of seconds of
    # CPU) that competes with the other test worker. Clouds in tests, in-process or subprocesses, export only where
    # a test asks for it (the `tflite_export` fixture; replays whose devices run a model set it themselves).
    os.environ.setdefault("WEARFED_TFLITE_EXPORT", "off")  # cloud.releases.EXPORT_ENV


@pytest.fixture
def tflite_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clouds started by this test export and sign TFLite releases (off elsewhere in the suite)."""
    monkeypatch.setenv("WEARFED_TFLITE_EXPORT", "on")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.originalname in POSTGRES_TWINS_SLOW and callspec and "postgres" in callspec.id.split("-"):
            item.add_marker(pytest.mark.slow)


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
