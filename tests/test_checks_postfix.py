"""The opt-in checks against the real Postfix: what a real server answers, and what its log says
the checks sent it."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from exporter.checks.model import CheckName, CheckRun
from exporter.checks.run import run_checks
from exporter.model import Checks, Mode, Target
from tests.fixtures.postfix import Listener, PostfixServer

pytestmark = pytest.mark.postfix

LOG_DEADLINE = 10.0


def target(lst: Listener, checks: Checks) -> Target:
    return Target.create(
        lst.host,
        lst.port,
        mode=Mode(lst.mode),
        server_name=lst.server_name,
        ca_file=lst.ca_file,
        ehlo_name="probe.example.test",
        timeout=5,
        checks=checks,
    )


async def one(postfix: PostfixServer, name: str, checks: Checks) -> CheckRun:
    (run,) = await run_checks(target(postfix.listener(name), checks), None)
    return run


def disconnect_lines(postfix: PostfixServer, name: str, since: int, count: int) -> list[str]:
    """The next `count` "disconnect from" lines smtpd of listener `name` logs after byte
    `since`: each counts the commands of one connection. Postfix logs them once the client has
    gone, so they are waited for."""
    pattern = re.compile(rf"postfix/{name}/smtpd\[\d+\]: disconnect from .*")
    deadline = time.monotonic() + LOG_DEADLINE
    while True:
        with Path(postfix.log_file).open("rb") as fh:
            fh.seek(since)
            found = pattern.findall(fh.read().decode(errors="replace"))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)  # poll interval: the loop checks the log itself


def log_size(postfix: PostfixServer) -> int:
    return Path(postfix.log_file).stat().st_size


async def test_postfix_drops_the_injected_noop(postfix: PostfixServer) -> None:
    since = log_size(postfix)
    run = await one(postfix, "relay_25", Checks(starttls_injection=True))
    assert (run.verdict, run.failure) == (False, None)
    texts = [e.text for e in run.transcript]
    assert any("nothing inside TLS in 2s" in t for t in texts), texts
    assert texts[-1].startswith("221"), "QUIT inside TLS was answered: the session went on"
    # Postfix counts the commands it executed: the NOOP is not among them.
    (line,) = disconnect_lines(postfix, "relay_25", since, 1)
    assert line.endswith("ehlo=1 starttls=1 quit=1 commands=3"), line


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("relay_25", (True, True, True)),  # Postfix's default: >=TLSv1
        ("smtps_465", (True, True, True)),  # implicit TLS
        ("modern_tls", (False, False, True)),
        ("tls12_only", (False, False, True)),
    ],
)
async def test_postfix_protocols(
    postfix: PostfixServer, name: str, accepted: tuple[bool, bool, bool]
) -> None:
    run = await one(postfix, name, Checks(protocols=True))
    assert run.failure is None, run.failure
    assert run.accepted == tuple(zip(("TLS 1.0", "TLS 1.1", "TLS 1.2"), accepted, strict=True))


async def test_postfix_protocol_dialogues_quit_after_an_accepted_handshake(
    postfix: PostfixServer,
) -> None:
    since = log_size(postfix)
    run = await one(postfix, "modern_tls", Checks(protocols=True))
    assert run.accepted == (("TLS 1.0", False), ("TLS 1.1", False), ("TLS 1.2", True))
    lines = disconnect_lines(postfix, "modern_tls", since, 3)
    # two refused handshakes end after STARTTLS; the accepted one QUITs inside TLS
    assert sorted(line.split("] ", 2)[-1] for line in lines) == [
        "ehlo=1 starttls=0/1 commands=1/2",
        "ehlo=1 starttls=0/1 commands=1/2",
        "ehlo=1 starttls=1 quit=1 commands=3",
    ], lines


@pytest.mark.parametrize(
    ("name", "requires", "logged"),
    [
        ("submission_encrypt", True, "ehlo=1 mail=0/1 rset=0/1 quit=1 commands=2/4"),
        ("submission_587", False, "ehlo=1 mail=1 rset=1 quit=1 commands=4"),
        ("auth_in_clear", False, "ehlo=1 quit=1 commands=2"),  # AUTH offered: no MAIL
    ],
)
async def test_postfix_submission(
    postfix: PostfixServer, name: str, requires: bool, logged: str
) -> None:
    since = log_size(postfix)
    run = await one(postfix, name, Checks(submission_requires_tls=True))
    assert (run.verdict, run.failure) == (requires, None)
    sent = [e.text for e in run.transcript if e.kind == "C"]
    assert all(not c.startswith(("RCPT", "DATA", "AUTH", "STARTTLS")) for c in sent), sent
    (line,) = disconnect_lines(postfix, name, since, 1)
    assert line.endswith(logged), line
    if requires:
        mail_reply = next(e.text for e in run.transcript if e.kind == "S" and "5.7.0" in e.text)
        assert mail_reply == "530 5.7.0 Must issue a STARTTLS command first"


async def test_every_check_of_one_target(postfix: PostfixServer) -> None:
    runs = await run_checks(
        target(postfix.listener("submission_encrypt"), Checks(True, True, True)), None
    )
    assert [r.check for r in runs] == list(CheckName)
    assert [r.failure for r in runs] == [None, None, None]
    injection, protocols, submission = runs
    assert injection.verdict is False
    assert protocols.accepted == (("TLS 1.0", True), ("TLS 1.1", True), ("TLS 1.2", True))
    assert submission.verdict is True
