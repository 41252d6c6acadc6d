"""Shared fixtures: a test CA, TLS contexts for scripted servers, and the real Postfix."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator

import pytest
import trustme

pytest_plugins = [
    "tests.fixtures.postfix",
    "tests.fixtures.dns",
    "tests.fixtures.zone",
    "tests.fixtures.dnssec",
]

IN_CI = os.environ.get("CI") == "true"


def need(condition: bool, why: str) -> None:
    """Skip on a developer machine without a peer; fail in CI, where every peer must be there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{why} (CI=true: a missing peer is a failure)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> Iterator[ssl.SSLContext]:
    """A server context with a certificate for scripted.test and 127.0.0.1."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("scripted.test", "127.0.0.1").configure_cert(ctx)
    yield ctx


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `load` run only when asked for by name: `-m load`."""
    if "load" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="opt-in: ./scripts/test -m load tests/test_load.py")
    for item in items:
        if "load" in item.keywords:
            item.add_marker(skip)
