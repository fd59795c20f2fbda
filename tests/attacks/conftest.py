"""The attack tests use the cloud tests' fixtures: a real uvicorn cloud, an HTTP client, three enrolled nodes."""

from tests.cloud.conftest import http, nodes  # noqa: F401
