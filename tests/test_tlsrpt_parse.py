"""TLS-RPT record parsing (RFC 8460 section 3), by table and by fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.domains.model import CheckError, CheckReason
from exporter.domains.tlsrpt import parse_tlsrpt_record, select_tlsrpt_record


@pytest.mark.parametrize(
    ("text", "rua", "extensions"),
    [
        ("v=TLSRPTv1; rua=mailto:tlsrpt@example.com", ("mailto:tlsrpt@example.com",), ()),
        ("v=TLSRPTv1;rua=mailto:tlsrpt@example.com;", ("mailto:tlsrpt@example.com",), ()),
        (
            "v=TLSRPTv1; rua=mailto:a@example.com,https://report.example.com/v1",
            ("mailto:a@example.com", "https://report.example.com/v1"),
            (),
        ),
        (
            "v=TLSRPTv1 ; rua=mailto:a@example.com , \tmailto:b@example.com ; ",
            ("mailto:a@example.com", "mailto:b@example.com"),
            (),
        ),
        ("v=TLSRPTv1; rua=MAILTO:a@example.com", ("MAILTO:a@example.com",), ()),  # RFC 3986 3.1
        ("v=TLSRPTv1; rua=mailto:a%40b@example.com", ("mailto:a%40b@example.com",), ()),
        ("v=TLSRPTv1; rua=https://[2001:db8::1]/r", ("https://[2001:db8::1]/r",), ()),
        ("v=TLSRPTv1; x=1; rua=mailto:a@b.example", ("mailto:a@b.example",), (("x", "1"),)),
    ],
)
def test_valid_records(
    text: str, rua: tuple[str, ...], extensions: tuple[tuple[str, str], ...]
) -> None:
    record = parse_tlsrpt_record(text)
    assert record.rua == rua
    assert record.extensions == extensions


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("v=TLSRPTv1", "no field after v=TLSRPTv1"),
        ("v=TLSRPTv1;", "no field after v=TLSRPTv1"),
        ("v=TLSRPTv1 rua=mailto:a@example.com", "no `;` after v=TLSRPTv1"),
        ("v=TLSRPTv1; ruf=mailto:a@example.com", "no rua field"),
        ("v=TLSRPTv1; RUA=mailto:a@example.com", "no rua field"),
        ("v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com", "more than one rua"),
        ("v=TLSRPTv1; rua=", "rua '': empty"),
        ("v=TLSRPTv1; rua=mailto:a@example.com,,mailto:b@example.com", "rua '': empty"),
        ("v=TLSRPTv1; rua=ftp://example.com/r", "scheme ftp: is not mailto: or https:"),
        ("v=TLSRPTv1; rua=http://example.com/r", "scheme http: is not mailto: or https:"),
        ("v=TLSRPTv1; rua=tlsrpt@example.com", "no scheme: use mailto: or https:"),
        ("v=TLSRPTv1; rua=mailto:", "a mailto: URI needs an address"),
        ("v=TLSRPTv1; rua=mailto:@example.com", "a mailto: URI needs an address"),
        ("v=TLSRPTv1; rua=https:///r", "an https: URI needs a host"),
        ("v=TLSRPTv1; rua=https://[::1/r", "not a URI"),
        ("v=TLSRPTv1; rua=mailto:a b@example.com", "not a URI (spaces"),
        ("v=TLSRPTv1; rua=mailto:a@example.com; e=x y", "field e: value 'x y' not allowed"),
    ],
)
def test_bad_records(text: str, detail: str) -> None:
    with pytest.raises(CheckError) as caught:
        parse_tlsrpt_record(text)
    assert caught.value.reason is CheckReason.BAD_RECORD
    assert detail in caught.value.detail


@pytest.mark.parametrize(
    ("texts", "reason"),
    [
        ((), CheckReason.NO_RECORD),
        (("v=spf1 -all",), CheckReason.NO_RECORD),
        (("v=TLSRPTv10; rua=mailto:a@example.com",), CheckReason.NO_RECORD),
        (
            ("v=TLSRPTv1; rua=mailto:a@example.com", "v=TLSRPTv1; rua=mailto:b@example.com"),
            CheckReason.MULTIPLE_RECORDS,
        ),
        (("v=TLSRPTv1; rua=gopher://x",), CheckReason.BAD_RECORD),
    ],
)
def test_selection_failures(texts: tuple[str, ...], reason: CheckReason) -> None:
    with pytest.raises(CheckError) as caught:
        select_tlsrpt_record(texts)
    assert caught.value.reason is reason


def test_selection_ignores_other_records() -> None:
    record = select_tlsrpt_record(["v=spf1 -all", "v=TLSRPTv1; rua=mailto:r@example.com"])
    assert record.rua == ("mailto:r@example.com",)


@given(st.text())
def test_fuzz_record_text(text: str) -> None:
    try:
        record = parse_tlsrpt_record(text)
    except CheckError as exc:
        assert exc.reason is CheckReason.BAD_RECORD
    else:
        assert record.rua


_URI = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda scheme, rest: f"{scheme}{rest}",
        st.sampled_from(["mailto:", "https://", "http://", "MAILTO:", ""]),
        st.text(max_size=20),
    ),
)


@given(st.lists(_URI, min_size=1, max_size=3), st.sampled_from([",", " , ", ";"]))
def test_fuzz_rua_lists(uris: list[str], sep: str) -> None:
    try:
        select_tlsrpt_record([f"v=TLSRPTv1; rua={sep.join(uris)}"])
    except CheckError as exc:
        assert exc.reason is CheckReason.BAD_RECORD
