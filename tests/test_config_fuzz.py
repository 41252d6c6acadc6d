"""Hostile config files: whatever the text or the data in it, `parse_config` (and the web config
parser) gives a Config or its own error with key paths, never another exception or a hang."""

from __future__ import annotations

import string
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import (
    _DEFAULT_KEYS,
    _TARGET_KEYS,
    _TOP_KEYS,
    Config,
    ConfigError,
    parse_config,
)
from exporter.domains.config import DNS_KEYS, DOMAIN_KEYS
from exporter.web.config import WebConfig, WebConfigError, parse_web_config

# Each example must finish well within this; a hang fails the test instead of stalling CI.
PER_EXAMPLE = 5.0
SETTINGS = settings(
    max_examples=150,
    deadline=None,  # timing is checked by `bounded`, which also catches a real hang
    suppress_health_check=[HealthCheck.too_slow],
)

KEYS = sorted({*_TOP_KEYS, *_DEFAULT_KEYS, *_TARGET_KEYS, *DNS_KEYS, *DOMAIN_KEYS})
WEB_KEYS = [
    *("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"),
    *("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "headers"),
    *("http2", "interval", "burst", "X-Frame-Options", "client_allowed_sans"),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            *("127.0.0.1:25", "[::1]:587", "localhost", "465", "1m30s", "0s", "-1s", "1e400"),
            *("implicit_tls", "starttls", "required", "report", "/dev/null", ".", "\x00", "::"),
            *("[::1]", "a" * 300, "example.com", "TLS13", "RequireAndVerifyClientCert"),
        ]
    ),
)


def nested(keys: list[str]) -> st.SearchStrategy[Any]:
    """Arbitrary nested data whose mapping keys are mostly the ones the loader knows."""
    key = st.one_of(st.sampled_from(keys), st.text(max_size=10), st.integers(), st.booleans())
    return st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.dictionaries(key, children, max_size=6),
        ),
        max_leaves=40,
    )


def bounded(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run fn in a thread; fail if it does not return within PER_EXAMPLE seconds."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("ok", fn(*args, **kwargs)))
        except BaseException as exc:  # re-raised below, in the test's thread
            outcome.append(("raised", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(PER_EXAMPLE)
    if worker.is_alive():
        pytest.fail(f"{fn.__name__} did not return within {PER_EXAMPLE}s on {args[:1]!r}")
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


def check_config(text: str, base: Path) -> None:
    try:
        config = bounded(parse_config, text, base_dir=str(base))
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(config, Config)


def check_web(text: str, base: Path) -> None:
    try:
        config = bounded(parse_web_config, text, base_dir=str(base))
    except WebConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    assert isinstance(config, WebConfig)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(st.text(max_size=400))
def test_arbitrary_text(base: Path, text: str) -> None:
    check_config(text, base)
    check_web(text, base)


YAMLISH = st.lists(
    st.one_of(
        st.sampled_from([f"{k}:" for k in KEYS]),
        st.sampled_from(
            ["- ", "  ", "    ", ": ", "{", "}", "[", "]", ", ", "\n", "#", "&a ", "*a"]
        ),
        st.sampled_from(["!!python/object:os.system", "!!binary", "<<: *a", "? ", "---", "..."]),
        st.text(alphabet=string.printable, max_size=8),
    ),
    max_size=60,
).map("".join)


@SETTINGS
@given(YAMLISH)
def test_yaml_ish_text(base: Path, text: str) -> None:
    check_config(text, base)
    check_web(text, base)


@SETTINGS
@given(nested(KEYS))
def test_arbitrary_nested_data(base: Path, data: Any) -> None:
    check_config(yaml.safe_dump(data), base)


@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "defaults": nested(KEYS),
            "dns": nested(KEYS),
            "targets": st.lists(nested(KEYS), max_size=4),
            "domains": st.lists(nested(KEYS), max_size=4),
            "probe_allowlist": nested(KEYS),
        },
    )
)
def test_config_shaped_data(base: Path, data: dict[str, Any]) -> None:
    check_config(yaml.safe_dump(data), base)


@SETTINGS
@given(nested(WEB_KEYS))
def test_web_config_shaped_data(base: Path, data: Any) -> None:
    check_web(yaml.safe_dump(data), base)


def test_alias_bombs_end_quickly(base: Path) -> None:
    # "Billion laughs": PyYAML shares aliased nodes rather than copying them, and the reader
    # never walks them deeply, so this is refused (or read) at once.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = "\n".join(lines) + "\ntargets: *a8\n"
    check_config(text, base)
    check_web(text.replace("targets", "basic_auth_users"), base)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom"])
def test_device_files_are_refused_not_read_for_ever(base: Path, path: str) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        bounded(parse_config, f"defaults: {{ca_file: {path}}}\ntargets: []\n")
    with pytest.raises(WebConfigError, match="not a regular file"):
        bounded(parse_web_config, f"tls_server_config: {{cert_file: {path}, key_file: {path}}}")
