"""Pure SMTP reply parsing (RFC 5321 section 4.2): framing, codes, enhanced status codes, EHLO."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

# RFC 5321 section 4.5.3.1.5 limits a reply line to 512 octets; real servers exceed it a little
# (long banners, EHLO SIZE lines), so we allow more, but never unbounded.
MAX_LINE = 2048
MAX_LINES = 100
MAX_REPLY = 64 * 1024

# RFC 3463 / RFC 2034: class.subject.detail, the class matching the reply code's first digit.
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")


class ReplyError(Exception):
    """The server's bytes are not an SMTP reply we accept."""

    kind = "protocol_error"


class ReplyTooLarge(ReplyError):
    kind = "reply_too_large"


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]  # text after the code and separator, one entry per line
    enhanced: str | None = None  # e.g. "2.0.0" when the server sends enhanced status codes

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def render(self) -> str:
        """The reply as the server sent it, CRLFs replaced by newlines."""
        last = len(self.lines) - 1
        return "\n".join(
            f"{self.code}{' ' if i == last else '-'}{line}".rstrip()
            for i, line in enumerate(self.lines)
        )


def take_reply(buf: bytes | bytearray) -> tuple[Reply | None, int]:
    """Parse one complete reply from the start of `buf`.

    Returns (reply, bytes consumed), or (None, 0) when more bytes are needed. Raises ReplyError on
    bytes that cannot be an SMTP reply and ReplyTooLarge past the limits, so a hostile server can
    neither confuse the dialogue nor grow memory.
    """
    return _take_plain(buf) or _take_careful(buf)


# A whole reply line of the usual shape: code, separator, text without CR, CRLF or LF.
_PLAIN_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r?\n")


def _take_plain(buf: bytes | bytearray) -> tuple[Reply, int] | None:
    """A complete reply whose every line has the usual shape, within the limits; None for
    anything else (incomplete, unusual, wrong or too large), which _take_careful then reads
    line by line and words. The same reply either way: a test holds them to it."""
    if len(buf) > MAX_REPLY:
        return None
    match = _PLAIN_LINE.match
    pos = 0
    code = b""
    texts: list[str] = []
    while True:
        m = match(buf, pos)
        if m is None or m.end() - 1 - pos > MAX_LINE or len(texts) == MAX_LINES:
            return None
        if not texts:
            code = m.group(1)
        elif m.group(1) != code:
            return None
        texts.append(m.group(3).decode("utf-8", errors="replace"))
        pos = m.end()
        if m.group(2) == b" ":
            number = int(code)
            return Reply(number, tuple(texts), _enhanced(number, texts[0])), pos


def _take_careful(buf: bytes | bytearray) -> tuple[Reply | None, int]:
    pos = 0
    code: int | None = None
    texts: list[str] = []
    while True:
        end = buf.find(b"\n", pos)
        if end < 0:
            _check_prefix(bytes(buf[pos : pos + 4]))
            if len(buf) - pos > MAX_LINE:
                raise ReplyTooLarge(f"reply line longer than {MAX_LINE} bytes")
            if len(buf) > MAX_REPLY:
                raise ReplyTooLarge(f"reply longer than {MAX_REPLY} bytes")
            return None, 0
        if end - pos > MAX_LINE:
            raise ReplyTooLarge(f"reply line longer than {MAX_LINE} bytes")
        raw = bytes(buf[pos:end])
        pos = end + 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        line_code, final, text = _parse_line(raw)
        if code is None:
            code = line_code
        elif line_code != code:
            # RFC 5321 section 4.2.1: every line of a multi-line reply carries the same code.
            raise ReplyError(f"multi-line reply changes code from {code} to {line_code}")
        texts.append(text)
        if len(texts) > MAX_LINES:
            raise ReplyTooLarge(f"reply has more than {MAX_LINES} lines")
        if pos > MAX_REPLY:
            raise ReplyTooLarge(f"reply longer than {MAX_REPLY} bytes")
        if final:
            return Reply(code, tuple(texts), _enhanced(code, texts[0])), pos


def _check_prefix(partial: bytes) -> None:
    # Refuse a line that cannot become a reply as soon as it starts, rather than waiting for a
    # line end that a TLS record or a binary protocol may never send.
    digits = partial[:3]
    if digits and not digits.isdigit():
        raise ReplyError(f"not an SMTP reply line: {_show(partial)}")
    if len(partial) == 4 and partial[3:4] not in (b" ", b"-", b"\r", b"\n"):
        raise ReplyError(f"bad separator after reply code: {_show(partial)}")


def _parse_line(raw: bytes) -> tuple[int, bool, str]:
    if len(raw) < 3 or not raw[:3].isdigit():
        raise ReplyError(f"not an SMTP reply line: {_show(raw)}")
    code = int(raw[:3])
    if not 200 <= code <= 599:
        raise ReplyError(f"reply code {code} out of range: {_show(raw)}")
    if len(raw) == 3:
        return code, True, ""
    sep = raw[3:4]
    if sep not in (b" ", b"-"):
        raise ReplyError(f"bad separator after reply code: {_show(raw)}")
    text = raw[4:].decode("utf-8", errors="replace")
    return code, sep == b" ", text


def _enhanced(code: int, first_text: str) -> str | None:
    m = _ENHANCED.match(first_text)
    if m is None or int(m.group(1)) != code // 100:
        return None
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"


def _show(raw: bytes, limit: int = 60) -> str:
    return repr(raw[:limit]) + ("..." if len(raw) > limit else "")


@dataclass(frozen=True)
class Ehlo:
    """What an EHLO reply says about the server (RFC 5321 section 4.1.1.1)."""

    domain: str
    extensions: dict[str, tuple[str, ...]]  # keyword (upper case) -> parameters

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.extensions

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        mechs = self.extensions.get("AUTH", ())
        return tuple(dict.fromkeys(sys.intern(m.upper()) for m in mechs))


def parse_ehlo(reply: Reply) -> Ehlo:
    first, *rest = reply.lines or ("",)
    domain = first.split(" ", 1)[0]
    extensions: dict[str, tuple[str, ...]] = {}
    for line in rest:
        words = line.split()
        if not words:
            continue
        # Interned: the same few keywords are kept in every result (SmtpFacts), once each.
        keyword = sys.intern(words[0].upper())
        params = tuple(words[1:])
        # Some servers still send the pre-standard "AUTH=LOGIN PLAIN" form next to "AUTH ...".
        if keyword.startswith("AUTH="):
            keyword, params = "AUTH", (keyword[5:], *params)
        if keyword in extensions and keyword == "AUTH":
            params = extensions[keyword] + params
        extensions[keyword] = params
    return Ehlo(domain=domain, extensions=extensions)
