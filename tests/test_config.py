"""The config loader: a table of invalid configs with their exact errors, defaults, durations."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import trustme
import yaml

from exporter import config as config_module
from exporter.config import (
    Config,
    ConfigError,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from exporter.dane.config import DANE_KEYS, DaneConfig
from exporter.domains.config import DNS_KEYS, DOMAIN_KEYS, DnsConfig, DomainConfig
from exporter.model import Checks, Mode, Target, VerifyPolicy

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yml"


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trust") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text))
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


INVALID = [
    pytest.param("", ["the config is empty: it needs at least `targets:`"], id="empty"),
    pytest.param(
        "# all commented out\n",
        ["the config is empty: it needs at least `targets:`"],
        id="comments",
    ),
    pytest.param("- localhost:25\n", ["the config must be a mapping, got a list"], id="list"),
    pytest.param(
        "localhost:25\n", ['the config must be a mapping, got "localhost:25"'], id="scalar"
    ),
    pytest.param(
        "defaults:\n  interval: 30s\n",
        ["targets: missing (an empty list is allowed)"],
        id="no-targets",
    ),
    pytest.param(
        "targets: []\ndns: {}\ndomains: []\ntarget: []\ndomain: []\n",
        ["target: unknown key", "domain: unknown key"],
        id="unknown-top-level",
    ),
    pytest.param(
        "targets:\n  localhost: 25\n",
        ["targets: expected a list, got a mapping"],
        id="targets-mapping",
    ),
    pytest.param(
        "defaults: [1]\ntargets: []\n",
        ["defaults: expected a mapping, got a list"],
        id="defaults-list",
    ),
    pytest.param(
        """\
        defaults:
          interval: 5x
          timeout: 0
          concurrency: 0
          verify: strict
          colour: blue
        targets: []
        """,
        [
            "defaults.colour: unknown key",
            'defaults.interval: "5x" is not a duration',
            "defaults.timeout: 0 is not a positive duration",
            'defaults.verify: "strict" is not one of required, report',
            "defaults.concurrency: 0 is not a positive integer",
        ],
        id="defaults-values",
    ),
    pytest.param(
        "defaults:\n  interval: .nan\n  timeout: -5\n  concurrency: true\ntargets: []\n",
        [
            "defaults.interval: nan is not a duration",
            "defaults.timeout: -5 is not a duration",
            "defaults.concurrency: true is not a positive integer",
        ],
        id="defaults-odd-numbers",
    ),
    pytest.param(
        "defaults:\n  interval: 5s\ntargets: []\n",
        ["defaults.interval: 5s is shorter than the timeout (10s)"],
        id="interval-below-default-timeout",
    ),
    pytest.param(
        "defaults:\n  timeout: 2m\ntargets: []\n",
        ["defaults.timeout: 2m is longer than the interval (1m)"],
        id="timeout-above-default-interval",
    ),
    pytest.param(
        # sent verbatim after EHLO: a CR LF would inject an SMTP command
        'defaults:\n  ehlo_name: "probe.example\\r\\nMAIL FROM:<x>"\ntargets: []\n',
        [
            'defaults.ehlo_name: "probe.example\\r\\nMAIL FROM:<x>" is not a domain or an address'
            " literal like [192.0.2.1]"
        ],
        id="ehlo-name-injection",
    ),
    pytest.param(
        """\
        targets:
          - localhost
          - localhost:70000
          - ":25"
          - "bad host:25"
          - 25
          -
        """,
        [
            'targets[0]: "localhost" is not host:port (no port)',
            "targets[1]: \"localhost:70000\" is not host:port ('70000' is not a port)",
            'targets[2]: ":25" is not host:port (no host)',
            'targets[3]: "bad host" is not a host name or IP address',
            "targets[4]: expected host:port or a mapping, got 25",
            "targets[5]: expected host:port or a mapping, got null",
        ],
        id="shorthand",
    ),
    pytest.param(
        """\
        targets:
          - host: localhost
            port: 70000
          - host: localhost
            port: true
            mode: tls
            colour: blue
          - port: 25
          - name: ""
            host: 127.0.0.1
            port: "25"
            verify: yes
            interval: 1m
            timeout: 2m
          - host: localhost
            port: 25
            labels:
              target: x
              __meta: y
              bad-name: z
              env: 1
              site: ""
          - host: localhost
            port: 25
            labels: [a]
          - host: "x y"
            port: 25
            server_name: "a b"
            ehlo_name: ""
            ca_file: 7
            name: [1]
            1: one
        """,
        [
            "targets[0].port: 70000 is not a port",
            "targets[1].colour: unknown key",
            "targets[1].port: true is not a port",
            'targets[1].mode: "tls" is not one of implicit_tls, starttls',
            "targets[2].host: missing",
            'targets[3].port: "25" is not a port',
            'targets[3].name: "" is not a name (a non-empty printable string)',
            "targets[3].verify: true is not one of required, report",
            "targets[3].timeout: 2m is longer than the interval (1m)",
            "targets[4].labels.target: reserved: the exporter sets this label itself",
            "targets[4].labels.__meta: label names starting with __ are reserved by Prometheus",
            "targets[4].labels.bad-name: not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)",
            "targets[4].labels.env: 1 is not a string (quote it)",
            "targets[4].labels.site: empty (Prometheus treats an empty label as no label)",
            "targets[5].labels: expected a mapping, got a list",
            "targets[6].1: unknown key",
            'targets[6].host: "x y" is not a host name or IP address',
            "targets[6].name: a list is not a name (a non-empty printable string)",
            'targets[6].server_name: "a b" is not a host name or IP address',
            "targets[6].ca_file: 7 is not a file path",
            'targets[6].ehlo_name: "" is not a domain or an address literal like [192.0.2.1]',
        ],
        id="every-target-problem-at-once",
    ),
    pytest.param(
        """\
        targets:
          - host: localhost
            port: 25
            labels: {phase: x, reason: y, python_version: z}
        """,
        [
            "targets[0].labels.phase: reserved: the exporter sets this label itself",
            "targets[0].labels.reason: reserved: the exporter sets this label itself",
            "targets[0].labels.python_version: reserved: the exporter sets this label itself",
        ],
        id="labels-the-collector-uses",
    ),
    pytest.param(
        """\
        defaults:
          timeout: 20s
        targets:
          - host: a.example.test
            port: 25
            interval: 15s
          - host: b.example.test
            port: 25
            interval: 1m
            timeout: 90s
        """,
        [
            "targets[0].interval: 15s is shorter than the timeout (20s)",
            "targets[1].timeout: 1m30s is longer than the interval (1m)",
        ],
        id="target-timeout-above-interval",
    ),
    pytest.param(
        """\
        targets:
          - a.example.test:25
          - host: a.example.test
            port: 25
          - name: a.example.test:25
            host: b.example.test
            port: 26
          - a.example.test:25
        """,
        [
            'targets[1].name: duplicate name "a.example.test:25" (also targets[0])',
            'targets[2].name: duplicate name "a.example.test:25" (also targets[0])',
            'targets[3]: duplicate name "a.example.test:25" (also targets[0])',
        ],
        id="duplicate-names",
    ),
    pytest.param(
        "targets: []\nprobe_allowlist:\n  - ok.example.test\n  - not ok\n  - 5\n",
        [
            'probe_allowlist[1]: "not ok" is not a host name or IP address',
            "probe_allowlist[2]: 5 is not a host name or IP address",
        ],
        id="allowlist-entries",
    ),
    pytest.param(
        "targets: []\nprobe_allowlist: {a: 1}\n",
        ["probe_allowlist: expected a list, got a mapping"],
        id="allowlist-mapping",
    ),
    pytest.param(
        """\
        dns:
          nameservers:
            - 127.0.0.1
            - "127.0.0.1:5353"
            - ns1.example.test
            - "127.0.0.2:99999"
            - "[::1]:5353"
            - "::1"
            - 53
            - "[::1"
          timeout: 0s
          retries: 3
        targets: []
        """,
        [
            "dns.retries: unknown key",
            'dns.timeout: "0s" is not a positive duration',
            "dns.nameservers[1]: 127.0.0.1 is listed twice (also dns.nameservers[0])",
            'dns.nameservers[2]: "ns1.example.test" is not an IP address or IP:port ([IPv6]:port)',
            'dns.nameservers[3]: "127.0.0.2:99999" is not an IP address or IP:port ([IPv6]:port)'
            " ('99999' is not a port)",
            "dns.nameservers[5]: ::1 is listed twice (also dns.nameservers[4])",
            "dns.nameservers[6]: expected an IP address or IP:port ([IPv6]:port), got 53",
            'dns.nameservers[7]: "[::1" is not an IP address or IP:port ([IPv6]:port)'
            " (unclosed '[')",
        ],
        id="dns-entries",
    ),
    pytest.param(
        "dns: [127.0.0.1]\ntargets: []\n",
        ["dns: expected a mapping, got a list"],
        id="dns-list",
    ),
    pytest.param(
        "dns:\n  nameservers: 127.0.0.1\ntargets: []\n",
        ['dns.nameservers: expected a list, got "127.0.0.1"'],
        id="dns-nameservers-scalar",
    ),
    pytest.param(
        "targets: []\ndomains: {example.test: {}}\n",
        ["domains: expected a list, got a mapping"],
        id="domains-mapping",
    ),
    pytest.param(
        """\
        targets: []
        domains:
          - example.test
          - localhost
          - "mail domain.test"
          - "bücher.example"
          - 192.0.2.1
          - _mta-sts.example.test
          - 25
          -
          - interval: 1h
          - name: [a]
          - name: Example.TEST.
        """,
        [
            'domains[1]: "localhost" is not a domain name (two or more labels of letters, digits'
            " and hyphens)",
            'domains[2]: "mail domain.test" is not a domain name (two or more labels of letters,'
            " digits and hyphens)",
            'domains[3]: "bücher.example" is not a domain name (two or more labels of letters,'
            " digits and hyphens)",
            'domains[5]: "_mta-sts.example.test" is not a domain name (two or more labels of'
            " letters, digits and hyphens)",
            "domains[6]: expected a domain name or a mapping, got 25",
            "domains[7]: expected a domain name or a mapping, got null",
            "domains[8].name: missing",
            "domains[9].name: a list is not a domain name (two or more labels of letters, digits"
            " and hyphens)",
            'domains[10].name: duplicate domain "example.test" (also domains[0])',
        ],
        id="domain-names",
    ),
    pytest.param(
        """\
        targets: []
        domains:
          - name: a.example.test
            interval: 5x
            mx_interval: 0
            timeout: -1
            probe_mx: "no"
            ehlo_name: "a b"
            ca_file: ""
            labels: {domain: x, mx: y, id: z, mx_preference: w, mode: v, ok: "1"}
            colour: blue
          - name: b.example.test
            interval: 5s
          - name: c.example.test
            timeout: 2h
          - name: d.example.test
            mx_interval: 5s
          - name: e.example.test
            mx_interval: 5s
            probe_mx: false
          - name: f.example.test
            timeout: 30s
            mx_interval: 20s
            interval: 25s
        """,
        [
            "domains[0].colour: unknown key",
            'domains[0].interval: "5x" is not a duration',
            "domains[0].mx_interval: 0 is not a positive duration",
            "domains[0].timeout: -1 is not a duration",
            'domains[0].probe_mx: "no" is not true or false',
            'domains[0].ca_file: "" is not a file path',
            'domains[0].ehlo_name: "a b" is not a domain or an address literal like [192.0.2.1]',
            "domains[0].labels.domain: reserved: the exporter sets this label itself",
            "domains[0].labels.mx: reserved: the exporter sets this label itself",
            "domains[0].labels.id: reserved: the exporter sets this label itself",
            "domains[0].labels.mx_preference: reserved: the exporter sets this label itself",
            "domains[0].labels.mode: reserved: the exporter sets this label itself",
            "domains[1].interval: 5s is shorter than the timeout (10s)",
            "domains[2].timeout: 2h is longer than the interval (1h)",
            "domains[2].timeout: 2h is longer than the mx_interval (1m)",
            "domains[3].mx_interval: 5s is shorter than the timeout (10s)",
            "domains[5].timeout: 30s is longer than the interval (25s)",
            "domains[5].timeout: 30s is longer than the mx_interval (20s)",
        ],
        id="every-domain-problem-at-once",
    ),
    pytest.param(
        """\
        defaults:
          all_addresses: "yes"
          checks: {protocols: 1, interval: 0, colour: blue}
        targets:
          - host: a.example.test
            port: 465
            all_addresses: null
            checks: {starttls_injection: true, submission_requires_tls: true, protocols: true}
          - host: a.example.test
            port: 25
            mode: implicit_tls
            checks: {submission_requires_tls: true}
          - host: a.example.test
            port: 587
            checks: [protocols]
          - host: a.example.test
            port: 2525
            checks: {interval: 1x, starttls_injection: "no"}
        domains:
          - name: example.test
            all_addresses: 1
            checks: {submission_requires_tls: false, protocols: true}
          - name: example.org
            checks: {starttls_injection: true, mode: starttls}
        """,
        [
            'defaults.all_addresses: "yes" is not true or false',
            "defaults.checks.colour: unknown key",
            "defaults.checks.protocols: 1 is not true or false",
            "defaults.checks.interval: 0 is not a positive duration",
            "targets[0].all_addresses: null is not true or false",
            "targets[0].checks.starttls_injection: only for mode starttls: an implicit TLS port"
            " has no STARTTLS",
            "targets[0].checks.submission_requires_tls: only for mode starttls: an implicit TLS"
            " port has no STARTTLS",
            "targets[1].checks.submission_requires_tls: only for mode starttls: an implicit TLS"
            " port has no STARTTLS",
            "targets[2].checks: expected a mapping, got a list",
            'targets[3].checks.starttls_injection: "no" is not true or false',
            'targets[3].checks.interval: "1x" is not a duration',
            "domains[0].all_addresses: 1 is not true or false",
            "domains[0].checks.submission_requires_tls: not for MX hosts: port 25 must accept"
            " mail without TLS (RFC 3207 section 4)",
            "domains[1].checks.mode: unknown key",
        ],
        id="checks-and-all-addresses",
    ),
    pytest.param(
        """\
        dane: {timeout: 0, cd_retry: maybe, colour: blue}
        targets:
          - {host: mx.example.test, port: 587, dane: true}
          - {host: 192.0.2.1, port: 25, dane: true}
          - {host: mx.example.test, port: 25, mode: implicit_tls, dane: true}
          - {host: mx.example.test, port: 2525, dane_names: [example.test, 5, "a b"]}
          - {host: mx2.example.test, port: 25, dane: "yes"}
          - {host: mx3.example.test, port: 25, dane: false, dane_names: example.test}
        domains:
          - {name: example.test, dane: true, probe_mx: false}
          - {name: example.org, dane: 1}
        """,
        [
            "targets[0].dane: only for port 25 (DANE for SMTP, RFC 7672), not 587",
            "targets[1].dane: needs a host name: TLSA records are looked up at _25._tcp.192.0.2.1",
            "targets[2].dane: only for mode starttls: MX hosts upgrade with STARTTLS on port 25",
            "targets[3].dane_names[1]: 5 is not a domain name",
            'targets[3].dane_names[2]: "a b" is not a domain name',
            "targets[3].dane_names: only with dane: true",
            'targets[4].dane: "yes" is not true or false',
            'targets[5].dane_names: expected a list, got "example.test"',
            "targets[5].dane_names: only with dane: true",
            "domains[0].dane: needs probe_mx: DANE checks the chain an MX probe is served",
            "domains[1].dane: 1 is not true or false",
            "dane.colour: unknown key",
            "dane.timeout: 0 is not a positive duration",
            'dane.cd_retry: "maybe" is not true or false',
            "dane.nameservers: missing: targets[0].dane, targets[1].dane, targets[2].dane,"
            " domains[0].dane need a DNSSEC-validating resolver for their TLSA lookups (the"
            " system's resolver is not used: its AD bit cannot be trusted)",
        ],
        id="dane",
    ),
    pytest.param(
        """\
        dane: {nameservers: []}
        targets: [{host: mx.example.test, port: 25, dane: true}]
        """,
        [
            "dane.nameservers: empty: targets[0].dane need a DNSSEC-validating resolver for"
            " their TLSA lookups (the system's resolver is not used: its AD bit cannot be"
            " trusted)"
        ],
        id="dane-without-nameservers",
    ),
    pytest.param(
        """\
        dane: {nameservers: [mx.example.test, "127.0.0.1:53", 127.0.0.1, "[::1]:x"]}
        targets: [{host: mx.example.test, port: 25, dane: true}]
        domains: [{name: example.test, dane: true}]
        """,
        [
            'dane.nameservers[0]: "mx.example.test" is not an IP address or IP:port ([IPv6]:port)',
            "dane.nameservers[2]: listed twice (also dane.nameservers[1])",
            'dane.nameservers[3]: "[::1]:x" is not an IP address or IP:port ([IPv6]:port)'
            " ('x' is not a port)",
        ],
        id="dane-nameservers",
    ),
    pytest.param(
        "targets:\n  - a:25\n - b:25\n",
        [
            "line 3, column 2: expected <block end>, but found '<block sequence start>'"
            " (while parsing a block mapping)"
        ],
        id="yaml-indentation",
    ),
    pytest.param(
        "targets:\n\t- a:25\n",
        [
            "line 2, column 1: found character '\\t' that cannot start any token"
            " (while scanning for the next token)"
        ],
        id="yaml-tab",
    ),
    pytest.param(
        "defaults:\n  interval: 30s\n  interval: 60s\ntargets: []\n",
        ['line 3, column 3: duplicate key "interval"'],
        id="yaml-duplicate-key",
    ),
    pytest.param(
        'targets: [{host: localhost, port: 25, ca_file: "a\\0b"}]\n',
        ["targets[0].ca_file: CA file 'a\\x00b': embedded null byte"],
        id="ca-file-with-a-nul",
    ),
    pytest.param(
        "targets: []\n---\ntargets: []\n",
        ["line 2, column 1: but found another document (expected a single document in the stream)"],
        id="yaml-two-documents",
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID)
def test_invalid_config(text: str, expected: list[str]) -> None:
    assert problems(text) == expected


def test_ca_file_problems(tmp_path: Path) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    text = f"""\
        defaults:
          ca_file: {missing}
        targets:
          - host: localhost
            port: 465
            ca_file: {not_pem}
        """
    assert problems(text) == [
        f"defaults.ca_file: CA file {missing}: No such file or directory",
        f"targets[0].ca_file: CA file {not_pem}: no PEM certificate in it",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "config.yml"
    with pytest.raises(ConfigError) as info:
        load_config(str(missing))
    assert info.value.problems == [f"cannot read {missing}: No such file or directory"]


def test_shorthand_defaults_by_port() -> None:
    config = parse_config("targets: [localhost:25, localhost:465, localhost:587, '[::1]:2525']\n")
    assert config == Config(
        targets=(
            Target(
                "localhost:25", "localhost", 25, Mode.STARTTLS, VerifyPolicy.REPORT, "localhost"
            ),
            Target(
                "localhost:465",
                "localhost",
                465,
                Mode.IMPLICIT_TLS,
                VerifyPolicy.REQUIRED,
                "localhost",
            ),
            Target(
                "localhost:587", "localhost", 587, Mode.STARTTLS, VerifyPolicy.REQUIRED, "localhost"
            ),
            Target("[::1]:2525", "::1", 2525, Mode.STARTTLS, VerifyPolicy.REPORT, "::1"),
        ),
        concurrency=50,
        probe_allowlist=(),
        source="<string>",
    )
    first = config.targets[0]
    assert (first.interval, first.timeout, first.ehlo_name, first.ca_file) == (60, 10, None, None)


def test_defaults_apply_and_targets_override(ca_pem: Path) -> None:
    text = f"""\
        defaults:
          interval: 1m30s
          timeout: 15
          ehlo_name: monitor.example.test
          ca_file: {ca_pem}
          verify: report
          concurrency: 4
        targets:
          - localhost:465
          - {{host: localhost, port: 587}}
          - name: relay
            host: 127.0.0.1
            port: 2525
            mode: implicit_tls
            server_name: mail.example.test
            verify: required
            ca_file: {ca_pem}
            interval: 2h
            timeout: 500ms
            ehlo_name: "[127.0.0.1]"
            labels: {{site: fra1, env: prod}}
        probe_allowlist: [mail.example.test, 192.0.2.25, "2001:db8::25"]
        """
    config = parse_config(textwrap.dedent(text), "inline.yml")
    assert config.concurrency == 4
    assert config.probe_allowlist == ("mail.example.test", "192.0.2.25", "2001:db8::25")
    assert config.source == "inline.yml"
    ca = str(ca_pem)
    assert config.targets == (
        Target(
            name="localhost:465",
            host="localhost",
            port=465,
            mode=Mode.IMPLICIT_TLS,
            verify=VerifyPolicy.REPORT,  # defaults.verify beats the port's default
            server_name="localhost",
            ehlo_name="monitor.example.test",
            ca_file=ca,
            timeout=15.0,
            interval=90.0,
        ),
        Target(
            name="localhost:587",
            host="localhost",
            port=587,
            mode=Mode.STARTTLS,
            verify=VerifyPolicy.REPORT,
            server_name="localhost",
            ehlo_name="monitor.example.test",
            ca_file=ca,
            timeout=15.0,
            interval=90.0,
        ),
        Target(
            name="relay",
            host="127.0.0.1",
            port=2525,
            mode=Mode.IMPLICIT_TLS,
            verify=VerifyPolicy.REQUIRED,
            server_name="mail.example.test",
            ehlo_name="[127.0.0.1]",
            ca_file=ca,
            timeout=0.5,
            interval=7200.0,
            labels=(("env", "prod"), ("site", "fra1")),
        ),
    )


def test_domains_and_dns_with_defaults_and_overrides(ca_pem: Path) -> None:
    text = f"""\
        defaults:
          interval: 2m
          timeout: 20s
          ehlo_name: monitor.example.test
          ca_file: {ca_pem}
        dns:
          nameservers: ["127.0.0.1:5353", "::1", "[2001:db8::53]:5353"]
          timeout: 1500ms
        targets: []
        domains:
          - Example.TEST.
          - name: other.example.test
            interval: 6h
            probe_mx: false
            mx_interval: 10m
            timeout: 5s
            ehlo_name: "[127.0.0.1]"
            labels: {{team: mail}}
        """
    config = parse_config(textwrap.dedent(text))
    assert config.dns == DnsConfig(
        (("127.0.0.1", 5353), ("::1", 53), ("2001:db8::53", 5353)), timeout=1.5
    )
    assert config.domains == (
        DomainConfig(
            name="example.test",  # lower case, no trailing dot
            interval=3600.0,
            probe_mx=True,
            mx_interval=120.0,  # defaults.interval
            timeout=20.0,
            ca_file=str(ca_pem),
            ehlo_name="monitor.example.test",
        ),
        DomainConfig(
            name="other.example.test",
            interval=6 * 3600.0,
            probe_mx=False,
            mx_interval=600.0,
            timeout=5.0,
            ca_file=str(ca_pem),
            ehlo_name="[127.0.0.1]",
            labels=(("team", "mail"),),
        ),
    )


def test_without_dns_the_system_resolver_and_no_domains() -> None:
    for text in (
        "targets: []\n",
        "dns:\ntargets: []\ndomains:\n",
        "dns: {nameservers: []}\ntargets: []\n",
    ):
        config = parse_config(text)
        assert config.dns == DnsConfig((), 5.0)
        assert config.domains == ()


def test_empty_sections_are_allowed() -> None:
    config = parse_config("defaults:\ntargets:\nprobe_allowlist:\n")
    assert config == Config((), 50, (), "<string>")
    assert parse_config("targets: []\n").targets == ()


def test_yaml_merge_keys_may_override() -> None:
    text = """\
        targets:
          - &relay {host: localhost, port: 25, interval: 30s}
          - <<: *relay
            name: second
            port: 2525
        """
    first, second = parse_config(textwrap.dedent(text)).targets
    assert (second.name, second.host, second.port, second.interval) == (
        "second",
        "localhost",
        2525,
        30,
    )
    assert first.port == 25


def test_relative_ca_file_is_relative_to_the_config(tmp_path: Path, ca_pem: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "ca.pem").write_bytes(ca_pem.read_bytes())
    path = conf_dir / "config.yml"
    path.write_text("targets:\n  - host: localhost\n    port: 587\n    ca_file: ca.pem\n")
    config = load_config(str(path))
    assert config.targets[0].ca_file == str(conf_dir / "ca.pem")
    assert config.source == str(path)


DURATIONS = [
    (30, 30.0),
    (0.5, 0.5),
    (0, 0.0),
    ("30s", 30.0),
    ("1m30s", 90.0),
    ("2h", 7200.0),
    ("500ms", 0.5),
    ("1h30m", 5400.0),
    ("1d", 86400.0),
    ("1d2h3m4s5ms", 93784.005),
    ("1.5s", 1.5),
    ("45", 45.0),
    (" 10s ", 10.0),
    ("0s", 0.0),
]
NOT_DURATIONS = [
    "5x",
    "",
    "s",
    "ms",
    "1m1m",
    "30s1m",  # units largest first
    "-5s",
    "1 m",
    "1h 30m",
    "1M",
    ".5s",
    "1e3",
    "nan",
    "inf",
    -1,
    float("inf"),
    float("nan"),
    True,
    None,
    [],
]


@pytest.mark.parametrize(("value", "seconds"), DURATIONS)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", NOT_DURATIONS)
def test_not_a_duration(value: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90, "1m30s"), (0.5, "500ms"), (60, "1m"), (86400, "1d"), (5400.5, "1h30m500ms"), (7, "7s")],
)
def test_format_duration_reads_back(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


# --- config.example.yml ----------------------------------------------------------------------


def test_example_active_targets_are_the_local_mta() -> None:
    config = load_config(str(EXAMPLE))
    assert [(t.host, t.port, t.mode) for t in config.targets] == [
        ("localhost", 25, Mode.STARTTLS),
        ("localhost", 465, Mode.IMPLICIT_TLS),
        ("localhost", 587, Mode.STARTTLS),
    ]
    assert config.probe_allowlist == ()


def enable_every_option(text: str, ca_file: Path) -> str:
    """The example with every "#option" line enabled; "# prose" stays a comment."""
    enabled = re.sub(r"(?m)^(\s*)#(?=[^\s#])", r"\1", text)
    # The example names the system bundle, which a test machine may lack.
    return re.sub(r"(?m)(ca_file: )\S+", rf"\g<1>{ca_file}", enabled)


def test_example_with_every_option_enabled_loads(ca_pem: Path) -> None:
    text = enable_every_option(EXAMPLE.read_text(encoding="utf-8"), ca_pem)
    raw = yaml.safe_load(text)
    # Every option the loader knows is shown in the example.
    assert tuple(raw) == config_module._TOP_KEYS
    assert set(raw["defaults"]) == set(config_module._DEFAULT_KEYS)
    mappings = [set(t) for t in raw["targets"] if isinstance(t, dict)]
    assert set().union(*mappings) == set(config_module._TARGET_KEYS)
    assert set(raw["dns"]) == set(DNS_KEYS)
    assert set(raw["dane"]) == set(DANE_KEYS)
    domain_mappings = [d for d in raw["domains"] if isinstance(d, dict)]
    assert [set(d) for d in domain_mappings] == [set(DOMAIN_KEYS)]
    config = parse_config(text)
    names = [t.name for t in config.targets]
    assert names[:3] == ["localhost:25", "localhost:465", "localhost:587"]
    assert len(names) > 3 and config.probe_allowlist
    # Public names appear only in what is commented out.
    public = [t.host for t in config.targets if t.host != "localhost"]
    assert public and all(h.endswith(".example.com") for h in public)
    assert [d.name for d in config.domains] == ["example.com", "example.org"]
    assert config.dns.nameservers == (
        ("192.0.2.53", 53),
        ("192.0.2.54", 5353),
        ("2001:db8::53", 53),
    )
    assert config.dane == DaneConfig((("127.0.0.1", 53),), 5.0, True)
    assert [t.name for t in config.targets if t.dane] == ["mx2.example.com:25"]
    assert [d.name for d in config.domains if d.dane] == ["example.org"]


def test_example_touches_nothing_remote() -> None:
    # Active as shipped: the local MTA only, no mail domain, the system's DNS.
    config = load_config(str(EXAMPLE))
    assert config.domains == ()
    assert config.dns == DnsConfig()
    assert config.dane == DaneConfig() and not any(t.dane for t in config.targets)


def test_defaults_apply_to_hosts_outside_the_config(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(trustme.CA().cert_pem.bytes())
    config = parse_config(
        f"defaults:\n  timeout: 3s\n  ehlo_name: probe.example.test\n  ca_file: {ca}\n"
        "  verify: required\ntargets: []\nprobe_allowlist: [127.0.0.2]\n"
    )
    target = config.defaults.target("127.0.0.2", 25)
    assert (target.timeout, target.ehlo_name) == (3.0, "probe.example.test")
    assert target.ca_file == str(ca)
    assert target.verify is VerifyPolicy.REQUIRED


def test_checks_and_all_addresses_inherit_key_by_key() -> None:
    config = parse_config(
        textwrap.dedent(
            """\
            defaults:
              all_addresses: true
              checks: {starttls_injection: true, submission_requires_tls: true, interval: 12h}
            targets:
              - localhost:25
              - {host: localhost, port: 465, checks: {protocols: true}}
              - {host: localhost, port: 587, all_addresses: false, checks: {interval: 1h}}
            domains:
              - example.test
              - {name: example.org, all_addresses: false, checks: {starttls_injection: false}}
            """
        )
    )
    relay, smtps, submission = config.targets
    assert relay.all_addresses and smtps.all_addresses and not submission.all_addresses
    assert relay.checks == Checks(
        starttls_injection=True, submission_requires_tls=True, interval=43200.0
    )
    # an implicit TLS target keeps what it inherits; only its STARTTLS checks never run
    assert smtps.checks == Checks(True, True, True, 43200.0)
    assert submission.checks == Checks(True, False, True, 3600.0)
    assert Target.create("localhost", 25).checks == Checks()  # all off, every 1d
    assert Checks().interval == 86400.0 and not Checks().enabled
    test, org = config.domains
    # MX hosts never get the submission check, from defaults or their own
    assert (test.all_addresses, test.checks) == (True, Checks(True, False, False, 43200.0))
    assert (org.all_addresses, org.checks) == (False, Checks(False, False, False, 43200.0))


def test_checks_are_off_without_config() -> None:
    config = parse_config("targets: [localhost:25]\ndomains: [example.test]\n")
    assert config.targets[0].checks == Checks() and not config.targets[0].all_addresses
    assert config.domains[0].checks == Checks() and not config.domains[0].all_addresses


def test_dane_for_targets_and_mx_hosts() -> None:
    config = parse_config(
        textwrap.dedent(
            """\
            dane: {nameservers: ["127.0.0.1:5353", "[::1]"], timeout: 2s, cd_retry: false}
            targets:
              - {host: mx.example.test, port: 25, dane: true, dane_names: [Example.TEST.]}
              - {host: mx.example.test, port: 2525}
              - mx.example.test:587
            domains:
              - {name: example.test, dane: true}
              - example.org
            """
        )
    )
    assert config.dane == DaneConfig((("127.0.0.1", 5353), ("::1", 53)), 2.0, False)
    mx, other, submission = config.targets
    assert (mx.dane, mx.dane_names) == (True, ("example.test",))
    assert not other.dane and not submission.dane and other.dane_names == ()
    assert [d.dane for d in config.domains] == [True, False]
    # DANE configured but used nowhere is fine; so is DANE nowhere configured
    assert parse_config("dane: {nameservers: [127.0.0.1]}\ntargets: []\n").dane.nameservers
    assert parse_config("targets: [mx.example.test:25]\n").dane == DaneConfig()
    assert DaneConfig().timeout == 5.0 and DaneConfig().cd_retry
