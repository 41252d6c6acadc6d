"""MTA-STS parsing (RFC 8461): TXT record, policy file and MX patterns, by table and by fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.domains.model import CheckError, CheckReason, InvalidPattern, StsMode
from exporter.domains.mta_sts import (
    mx_matches,
    parse_policy,
    parse_sts_record,
    pattern_problem,
    policy_matches,
    select_sts_record,
)

# -- the TXT record -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "record_id", "extensions"),
    [
        ("v=STSv1; id=20240101T000000;", "20240101T000000", ()),
        ("v=STSv1;id=abc", "abc", ()),
        ("v=STSv1 ;\tid=abc ;", "abc", ()),  # *WSP around the delimiter
        ("v=STSv1; id=abc ", "abc", ()),  # trailing whitespace: tolerated
        ("v=STSv1; id=abc; ext=val", "abc", (("ext", "val"),)),
        ("v=STSv1; x_1.y-z=a:b; id=A1", "A1", (("x_1.y-z", "a:b"),)),  # id need not come first
        ("v=STSv1; id=" + "a" * 32, "a" * 32, ()),
        ("v=STSv1; id=abc; v=STSv2", "abc", (("v", "STSv2"),)),  # a later v= is an extension
    ],
)
def test_valid_sts_records(
    text: str, record_id: str, extensions: tuple[tuple[str, str], ...]
) -> None:
    record = parse_sts_record(text)
    assert record.id == record_id
    assert record.extensions == extensions
    assert record.text == text


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("v=STSv1", "no field after v=STSv1"),
        ("v=STSv1;", "no field after v=STSv1"),
        ("v=STSv1 id=abc", "no `;` after v=STSv1"),
        ("v=STSv1; id=", "id '' is not 1 to 32 letters and digits"),
        ("v=STSv1; id=" + "a" * 33, "is not 1 to 32 letters and digits"),
        ("v=STSv1; id=2024-01-01", "id '2024-01-01' is not 1 to 32 letters and digits"),
        ("v=STSv1; id=a b", "id 'a b' is not 1 to 32 letters and digits"),
        ("v=STSv1; ID=abc", "no id field"),  # field names are case-sensitive
        ("v=STSv1; id=a; id=b", "more than one id field"),
        ("v=STSv1;; id=abc", "empty field"),
        ("v=STSv1; id = abc", "'id ' is not a field name"),
        ("v=STSv1; id=abc; ext", "field 'ext' is not name=value"),
        ("v=STSv1; id=abc; =x", "'' is not a field name"),
        ("v=STSv1; id=abc; e=x y", "field e: value 'x y' not allowed"),
        ("v=STSv1; id=abc; e=", "field e: value '' not allowed"),
        ("v=STSv1; id=ab\ufffdc", "is not 1 to 32 letters and digits"),  # a non-ASCII byte
    ],
)
def test_bad_sts_records(text: str, detail: str) -> None:
    with pytest.raises(CheckError) as caught:
        parse_sts_record(text)
    assert caught.value.reason is CheckReason.BAD_RECORD
    assert detail in caught.value.detail


@pytest.mark.parametrize(
    ("texts", "reason"),
    [
        ((), CheckReason.NO_RECORD),
        (("hello", "v=spf1 -all"), CheckReason.NO_RECORD),
        (("v=STSv10; id=1",), CheckReason.NO_RECORD),  # another version
        (("v=stsv1; id=1",), CheckReason.NO_RECORD),  # the version is case-sensitive
        (("v=STSv1; id=1", "v=STSv1; id=2"), CheckReason.MULTIPLE_RECORDS),
        (("v=STSv1; id=1", "v=STSv1; id=1"), CheckReason.MULTIPLE_RECORDS),
        (("v=STSv1; id=bad!",), CheckReason.BAD_RECORD),
        (("v=STSv1; id=bad!", "v=spf1"), CheckReason.BAD_RECORD),
    ],
)
def test_record_selection_failures(texts: tuple[str, ...], reason: CheckReason) -> None:
    with pytest.raises(CheckError) as caught:
        select_sts_record(texts)
    assert caught.value.reason is reason


def test_record_selection_ignores_other_records() -> None:
    record = select_sts_record(["v=spf1 -all", "v=STSv1; id=one", "google-site-verification=x"])
    assert record.id == "one"


def test_no_record_says_how_many_were_ignored() -> None:
    with pytest.raises(CheckError, match=r"2 other TXT record\(s\) ignored"):
        select_sts_record(["a", "b"])


# -- the policy ---------------------------------------------------------------------------------

ENFORCE = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmax_age: 604800\n"


@pytest.mark.parametrize(
    ("text", "mode", "max_age", "mx"),
    [
        (ENFORCE, StsMode.ENFORCE, 604800, ("mail.example.com",)),
        (ENFORCE.replace("\n", "\r\n"), StsMode.ENFORCE, 604800, ("mail.example.com",)),
        (ENFORCE.rstrip("\n"), StsMode.ENFORCE, 604800, ("mail.example.com",)),
        (
            "version: STSv1\r\nmode: testing\r\nmx: MX1.Example.COM.\r\nmx: *.example.net\r\n"
            "max_age: 86400\r\n",
            StsMode.TESTING,
            86400,
            ("mx1.example.com", "*.example.net"),
        ),
        ("version: STSv1\nmode: none\nmax_age: 0\n", StsMode.NONE, 0, ()),
        (
            "version: STSv1\nmode: none\nmx: a.example\nmax_age: 1\n",
            StsMode.NONE,
            1,
            ("a.example",),
        ),
        (
            "max_age:31557600\nmx:\tmail.example.com \nmode:  enforce\t\nversion: STSv1",
            StsMode.ENFORCE,
            31557600,
            ("mail.example.com",),
        ),
        (
            "version: STSv1\n\nmode: enforce\nmx: a.example.com\nmx: A.example.com\n"
            "max_age: 60\n\n\n",
            StsMode.ENFORCE,
            60,
            ("a.example.com",),  # blank lines tolerated; repeated patterns counted once
        ),
    ],
)
def test_valid_policies(text: str, mode: StsMode, max_age: int, mx: tuple[str, ...]) -> None:
    policy = parse_policy(text)
    assert (policy.mode, policy.max_age, policy.mx) == (mode, max_age, mx)
    assert policy.invalid_mx == ()


def test_unknown_keys_are_kept_aside() -> None:
    policy = parse_policy(ENFORCE + "comment: hello: world\nX-Ext.1: \xe9t\xe9\n")
    assert policy.extensions == (("comment", "hello: world"), ("X-Ext.1", "\xe9t\xe9"))


def test_ip_literals_in_mx_are_flagged_and_never_match() -> None:
    # Zuplu/postfix-tlspol #70: a policy listing an IP; senders must skip it.
    policy = parse_policy(
        ENFORCE + "mx: 212.114.86.56\nmx: [192.0.2.1]\nmx: 2001:db8::25\nmx: mx*.example.com\n"
    )
    assert policy.mx == ("mail.example.com",)
    assert policy.invalid_mx == (
        InvalidPattern("212.114.86.56", "an IP address, not a host name"),
        InvalidPattern("[192.0.2.1]", "an IP address, not a host name"),
        InvalidPattern("2001:db8::25", "an IP address, not a host name"),
        InvalidPattern(
            "mx*.example.com", "a wildcard must be the whole leftmost label (*.example.com)"
        ),
    )
    assert not policy_matches(policy, "212.114.86.56")
    assert policy_matches(policy, "MAIL.example.com.")


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "no version field"),
        ("version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age field"),
        ("version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode field"),
        ("mode: enforce\nmx: a.example\nmax_age: 1\n", "no version field"),
        ("Version: STSv1\nmode: none\nmax_age: 1\n", "no version field"),  # keys case-sensitive
        (ENFORCE.replace("STSv1", "STSv2"), "version 'STSv2' is not STSv1"),
        (ENFORCE.replace("enforce", "ENFORCE"), "mode 'ENFORCE' is not enforce, testing or none"),
        (ENFORCE.replace("enforce", "report"), "mode 'report' is not enforce, testing or none"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx field, required in mode enforce"),
        (
            "version: STSv1\nmode: testing\nmx: 192.0.2.1\nmax_age: 1\n",
            "no valid mx field ('192.0.2.1': an IP address, not a host name), required in mode",
        ),
        (ENFORCE.replace("604800", "31557601"), "max_age 31557601 is over the limit of 31557600"),
        (ENFORCE.replace("604800", "-1"), "max_age '-1' is not 1 to 10 digits"),
        (ENFORCE.replace("604800", "1e5"), "max_age '1e5' is not 1 to 10 digits"),
        (ENFORCE.replace("604800", "12345678901"), "is not 1 to 10 digits"),
        (ENFORCE.replace("604800", ""), "max_age '' is not 1 to 10 digits"),
        (ENFORCE.replace("604800", "\uff11"), "is not 1 to 10 digits"),  # a non-ASCII digit
        (ENFORCE + "mode enforce\n", "line 5: no `key:` in 'mode enforce'"),
        (" " + ENFORCE, "line 1: ' version' is not a key"),
        (ENFORCE.replace("mode:", "mode :"), "line 2: 'mode ' is not a key"),
        (ENFORCE + "mode: testing\n", "line 5: mode given twice"),
        (ENFORCE + "max_age: 1\n", "line 5: max_age given twice"),
        ("version: STSv1\rmode: enforce\r", "no mode field"),  # CR alone ends no line
    ],
)
def test_invalid_policies(text: str, detail: str) -> None:
    with pytest.raises(CheckError) as caught:
        parse_policy(text)
    assert caught.value.reason is CheckReason.PARSE_ERROR
    assert detail in caught.value.detail


# -- MX patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("MAIL.Example.COM.", "mail.example.com", True),
        ("mail.example.com", "Mail.Example.Com.", True),
        ("*.example.com", "mx1.example.com", True),
        ("*.Example.com.", "MX1.example.COM", True),
        ("*.example.com", "example.com", False),  # the wildcard needs a label
        ("*.example.com", "a.b.example.com", False),  # exactly one label (RFC 8461 4.1)
        ("*.example.com", "mx1.example.org", False),
        ("*.example.com", ".example.com", False),
        ("*.example.com", "xexample.com", False),
        ("mail.example.com", "mail.example.co", False),
        ("mail.example.com", "mx.mail.example.com", False),
        # jklotzsche-msft/PS.MTA-STS #33: one wildcard label does not cover two
        ("*.mx.microsoft", "contoso-com.o-v1.mx.microsoft", False),
        ("*.o-v1.mx.microsoft", "contoso-com.o-v1.mx.microsoft", True),
        ("", "mail.example.com", False),
        ("mail.example.com", "", False),
    ],
)
def test_mx_matching(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("mail.example.com", None),
        ("*.example.com", None),
        ("mail.example.com.", None),
        ("localhost", None),
        ("192.0.2.1", "an IP address, not a host name"),
        ("[IPv6:2001:db8::1]", "an IP address, not a host name"),
        ("", "empty"),
        ("*", "a wildcard must be the whole leftmost label (*.example.com)"),
        ("*.", "a wildcard must be the whole leftmost label (*.example.com)"),
        ("*.*.example.com", "a wildcard must be the whole leftmost label (*.example.com)"),
        ("mail.*.example.com", "a wildcard must be the whole leftmost label (*.example.com)"),
        ("-mail.example.com", "not a host name (letters, digits and hyphens in dot-separated"),
        ("mail..example.com", "not a host name (letters, digits and hyphens in dot-separated"),
        ("mail_1.example.com", "not a host name (letters, digits and hyphens in dot-separated"),
        ("m\xe4il.example.com", "not a host name (letters, digits and hyphens in dot-separated"),
        ("a" * 64 + ".example.com", "not a host name (letters, digits and hyphens"),
        (("a" * 60 + ".") * 5 + "com", "not a host name"),
    ],
)
def test_pattern_problems(pattern: str, problem: str | None) -> None:
    found = pattern_problem(pattern)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


# -- fuzzing: any text gives a result or our own error --------------------------------------------

_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


@given(st.text())
def test_fuzz_record_text(text: str) -> None:
    try:
        record = parse_sts_record(text)
    except CheckError as exc:
        assert exc.reason is CheckReason.BAD_RECORD
    else:
        assert 1 <= len(record.id) <= 32 and record.id.isascii() and record.id.isalnum()


@given(st.lists(st.text(max_size=40) | st.just("v=STSv1; id=x"), max_size=4))
def test_fuzz_record_selection(texts: list[str]) -> None:
    try:
        select_sts_record(texts)
    except CheckError as exc:
        assert exc.reason in {
            CheckReason.NO_RECORD,
            CheckReason.MULTIPLE_RECORDS,
            CheckReason.BAD_RECORD,
        }


@given(st.text())
def test_fuzz_policy_text(text: str) -> None:
    try:
        policy = parse_policy(text)
    except CheckError as exc:
        assert exc.reason is CheckReason.PARSE_ERROR
    else:
        assert 0 <= policy.max_age <= 31557600
        assert policy.mx or policy.mode is StsMode.NONE


_LINE = st.one_of(
    st.sampled_from(
        [
            "version: STSv1",
            "mode: enforce",
            "mode: testing",
            "mode: none",
            "max_age: 86400",
            "mx: *.example.com",
            "mx: 192.0.2.1",
            "",
        ]
    ),
    st.builds(lambda k, v: f"{k}:{v}", st.sampled_from(["mx", "max_age", "mode", "x"]), st.text()),
)


@given(st.lists(_LINE, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_fuzz_policy_lines(lines: list[str], newline: str) -> None:
    try:
        policy = parse_policy(newline.join(lines))
    except CheckError as exc:
        assert exc.reason is CheckReason.PARSE_ERROR
    else:
        assert all(pattern_problem(p) is None for p in policy.mx)


@given(
    st.sampled_from(list(StsMode)),
    st.integers(0, 31557600),
    st.lists(_NAME, min_size=1, max_size=4, unique=True),
    st.sampled_from(["\n", "\r\n"]),
)
def test_generated_policies_round_trip(
    mode: StsMode, max_age: int, names: list[str], newline: str
) -> None:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {n}" for n in names), f"max_age: {max_age}"]
    policy = parse_policy(newline.join(lines) + newline)
    assert (policy.mode, policy.max_age, policy.mx) == (mode, max_age, tuple(names))


@given(_LABEL, _NAME)
def test_wildcard_covers_exactly_one_label(label: str, name: str) -> None:
    assert mx_matches(f"*.{name}", f"{label}.{name}")
    assert not mx_matches(f"*.{name}", name)
    assert not mx_matches(f"*.{name}", f"{label}.{label}.{name}")


@given(st.text(), st.text())
def test_fuzz_mx_matching(pattern: str, host: str) -> None:
    assert isinstance(mx_matches(pattern, host), bool)
    assert isinstance(pattern_problem(pattern), str | None)
