"""Test helpers for governance: a cloud served with chosen settings, signed evaluation and drift reports."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from federation.drift import DRIFT_DOMAIN, histogram
from federation.evaluation import AGE_GROUPS, EVALUATION_DOMAIN, save_validation_set
from federation.signing import sign
from federation.windows import make_windows
from tests.cloud.participants import FakeNode
from tests.conftest import ADMIN_TOKEN, COMPLIANCE_TOKEN, CloudHandle, serve_app


@contextlib.contextmanager
def served(tmp_path: Path, **settings: object) -> Iterator[CloudHandle]:
    """The aggregator under a real uvicorn on a free port, with these CloudSettings overrides."""
    from cloud.app import CloudSettings, create_app

    cfg = CloudSettings(db_url=f"sqlite:///{tmp_path / 'cloud.db'}", state_dir=tmp_path / "cloud-state",
                        admin_token=ADMIN_TOKEN, compliance_token=COMPLIANCE_TOKEN, dev_insecure_custodian=True,
                        tick_seconds=0.1, **settings)
    app = create_app(cfg)
    with serve_app(app) as url:
        yield CloudHandle(url, app, cfg.state_dir, cfg.db_url)


def synthetic_windows(n_days: float = 1.0, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows of a noisy meal-like glucose curve (mg/dL) on the 5-min grid."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(n_days * 288))
    g = 140 + 50 * np.sin(2 * np.pi * t / 96) + 20 * np.sin(2 * np.pi * t / 37) + rng.normal(0, 5, t.size)
    return make_windows(np.clip(g, 45, 390))


def write_validation_set(path: Path, *, shift: dict[str, float] | None = None) -> Path:
    """Two days of synthetic windows, their age groups interleaved window by window (child, adolescent, adult, ...);
    `shift` adds mg/dL to one group's targets (a group the model serves worse)."""
    x, y = synthetic_windows(2.0, seed=3)
    groups = np.array(AGE_GROUPS)[np.arange(len(x)) % len(AGE_GROUPS)]
    for g, mgdl in (shift or {}).items():
        y[groups == g] += mgdl
    save_validation_set(path, x, y, meta={"source": "test"}, groups=groups)
    return path


def evaluation_report(node: FakeNode, version: int, model_hash: str, metrics: dict, *, key=None) -> dict:  # noqa: ANN001
    doc = {"participant": node.id, "model_version": version, "model_hash": model_hash, "metrics": metrics}
    return {**doc, "signature": sign(key or node.key, doc, domain=EVALUATION_DOMAIN)}


def drift_report(node: FakeNode, values: np.ndarray, *, t_start: float = 0.0, t_end: float = 21600.0,
                 report_id: str | None = None, key=None) -> dict:  # noqa: ANN001
    doc = {"participant": node.id, "t_start": t_start, "t_end": t_end, "counts": histogram(values),
           "report_id": report_id or uuid.uuid4().hex}
    return {**doc, "signature": sign(key or node.key, doc, domain=DRIFT_DOMAIN)}


def glucose(n: int, *, mean: float, sd: float = 40.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)

