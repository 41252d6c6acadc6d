"""Table tests for the pure SMTP reply parser and EHLO reader."""

from __future__ import annotations

import pytest

from exporter.smtp.reply import (
    MAX_LINE,
    MAX_LINES,
    Reply,
    ReplyError,
    ReplyTooLarge,
    parse_ehlo,
    take_reply,
)

COMPLETE = [
    (b"220 mx.test ESMTP\r\n", 220, ("mx.test ESMTP",), None),
    (b"220\r\n", 220, ("",), None),
    # postscreen: a multi-line greeting whose final line comes later (ssl_exporter PR #205)
    (
        b"220-mx.test\r\n220 mx.test ESMTP Postfix\r\n",
        220,
        ("mx.test", "mx.test ESMTP Postfix"),
        None,
    ),
    # "250 STARTTLS" as the last EHLO line (ssl_exporter PR #140)
    (
        b"250-mx.test\r\n250-SIZE 1000\r\n250 STARTTLS\r\n",
        250,
        ("mx.test", "SIZE 1000", "STARTTLS"),
        None,
    ),
    (b"454 4.7.0 TLS not available\r\n", 454, ("4.7.0 TLS not available",), "4.7.0"),
    (b"221 2.0.0 Bye\r\n", 221, ("2.0.0 Bye",), "2.0.0"),
    # a class that does not match the code is not an enhanced status code (RFC 3463)
    (b"250 5.0.0 odd\r\n", 250, ("5.0.0 odd",), None),
    # bare LF line ends are accepted
    (b"220 lf.test\n", 220, ("lf.test",), None),
]


@pytest.mark.parametrize(("data", "code", "lines", "enhanced"), COMPLETE)
def test_complete_replies(
    data: bytes, code: int, lines: tuple[str, ...], enhanced: str | None
) -> None:
    reply, used = take_reply(data)
    assert reply == Reply(code, lines, enhanced)
    assert used == len(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"220 partial", b"220-first line\r\n", b"220-a\r\n220-b\r\n220 c"],
)
def test_incomplete_replies_need_more(data: bytes) -> None:
    assert take_reply(data) == (None, 0)


def test_leaves_following_bytes() -> None:
    reply, used = take_reply(b"220 go\r\nINJECTED")
    assert reply is not None and reply.code == 220
    assert used == len(b"220 go\r\n")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n", "not an SMTP reply line"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", "not an SMTP reply line"),
        (b"22 short\r\n", "not an SMTP reply line"),
        (b"099 low\r\n", "out of range"),
        (b"220_mx\r\n", "bad separator"),
        (b"250-a\r\n550 b\r\n", "changes code from 250 to 550"),
    ],
)
def test_garbage_is_a_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(ReplyError) as info:
        take_reply(data)
    assert type(info.value) is ReplyError
    assert message in str(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"220 " + b"x" * (MAX_LINE + 10),  # one endless line, no newline yet
        b"220 " + b"x" * (MAX_LINE + 10) + b"\r\n",
        b"250-x\r\n" * (MAX_LINES + 1) + b"250 end\r\n",
    ],
)
def test_oversized_replies_are_refused(data: bytes) -> None:
    with pytest.raises(ReplyTooLarge):
        take_reply(data)


def test_reply_render_round_trips() -> None:
    data = b"250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS"
    reply, _ = take_reply(data + b"\r\n")
    assert reply is not None
    assert reply.render() == data.decode().replace("\r\n", "\n")


@pytest.mark.parametrize(
    ("data", "starttls", "auth"),
    [
        (b"250-mx.test Hi\r\n250-PIPELINING\r\n250 STARTTLS\r\n", True, ()),
        (b"250-mx.test\r\n250-starttls\r\n250 AUTH PLAIN LOGIN\r\n", True, ("PLAIN", "LOGIN")),
        (b"250-mx.test\r\n250-AUTH=LOGIN\r\n250 AUTH PLAIN LOGIN\r\n", False, ("LOGIN", "PLAIN")),
        (b"250 mx.test\r\n", False, ()),
    ],
)
def test_ehlo(data: bytes, starttls: bool, auth: tuple[str, ...]) -> None:
    reply, _ = take_reply(data)
    assert reply is not None
    ehlo = parse_ehlo(reply)
    assert ehlo.domain == "mx.test"
    assert ehlo.starttls is starttls
    assert ehlo.auth_mechanisms == auth


_SHAPES = [data for data, *_ in COMPLETE] + [
    b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
    b"220 caf\xc3\xa9 \xff ESMTP\r\n",  # UTF-8 and an invalid byte
    b"220-a\r\n220 b\r\nleft over",
    b"250-a\r\n550 b\r\n",
    b"220 a\rb\r\n",  # a CR inside the text
    b"220-" + b"x" * MAX_LINE + b"\r\n220 end\r\n",
    b"250-x\r\n" * MAX_LINES + b"250 end\r\n",
    b"250-x\r\n" * (MAX_LINES - 1) + b"250 end\r\n",
    b"220 " + b"x" * (MAX_LINE - 5) + b"\r\n",
    b"220-first\r\n",
    b"099 low\r\n",
]


@pytest.mark.parametrize("data", _SHAPES)
def test_the_plain_path_reads_what_the_careful_one_reads(data: bytes) -> None:
    """take_reply reads a reply of the usual shape with one regular expression and anything else
    line by line: where the first answers, the second must answer the same."""
    from exporter.smtp.reply import _take_careful, _take_plain

    plain = _take_plain(data)
    try:
        careful = _take_careful(data)
    except ReplyError:
        assert plain is None
        return
    assert plain is None or plain == careful


@pytest.mark.parametrize(("data", "code", "lines", "enhanced"), COMPLETE)
def test_usual_replies_take_the_plain_path(
    data: bytes, code: int, lines: tuple[str, ...], enhanced: str | None
) -> None:
    from exporter.smtp.reply import _take_plain

    if lines != ("",):  # a bare code ("220") is left to the careful path
        assert _take_plain(data) == (Reply(code, lines, enhanced), len(data))
