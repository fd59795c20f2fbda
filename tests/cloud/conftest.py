"""Fixtures shared by the cloud tests: an HTTP client on the real server and three enrolled fake nodes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.cloud.participants import FakeNode


@pytest.fixture
def http(cloud) -> Iterator[httpx.Client]:  # noqa: ANN001
    with httpx.Client(base_url=cloud.url, timeout=30) as client:
        yield client


@pytest.fixture
def nodes(http: httpx.Client) -> list[FakeNode]:
    out = [FakeNode(http, f"gw-{i}") for i in (1, 2, 3)]
    for n in out:
        assert n.enroll().status_code == 201
    return out
