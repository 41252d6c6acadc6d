"""The `check-domain` command: check one mail domain once and report what was found."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging

import dns.resolver

from exporter import __version__
from exporter.dane.cli import add_dane_arguments, dane_config
from exporter.dane.run import probe_with_dane
from exporter.domains.check import DomainChecker, is_domain_name, normalize_domain
from exporter.domains.fetch import Dns
from exporter.domains.report import problems, render_text, to_json
from exporter.model import ProbeResult, Target, parse_host_port
from exporter.probe import probe
from exporter.tls.verify import TrustStoreError, load_trust_store


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smtp-tls-exporter check-domain",
        description=(
            "Check one mail domain once: its MX hosts, MTA-STS record and policy (RFC 8461), "
            "TLS-RPT record (RFC 8460), and a STARTTLS probe of each MX on port 25. "
            "Exits 0 when no problem was found, 1 when one was, 2 on bad usage."
        ),
    )
    p.add_argument("domain", metavar="DOMAIN", help="the mail domain (the part after @)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--dns-server",
        action="append",
        metavar="HOST[:PORT]",
        help="name server IP to ask, port 53 by default; repeatable (default: /etc/resolv.conf)",
    )
    p.add_argument(
        "--ca-file", help="PEM trust anchors for the policy host and the MX (default: system)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds for each DNS lookup, the policy fetch and each MX probe (default 10)",
    )
    p.add_argument("--ehlo-name", help="name to send in EHLO (default: this machine's FQDN)")
    p.add_argument("--no-probe", action="store_true", help="do not probe the MX hosts")
    add_dane_arguments(p, "each MX host, with DOMAIN as a further DANE-TA name")
    p.add_argument("--version", action="version", version=f"smtp-tls-exporter {__version__}")
    return p


def _nameservers(parser: argparse.ArgumentParser, values: list[str]) -> list[tuple[str, int]]:
    out = []
    for value in values:
        try:
            host, port = parse_host_port(value, default_port=53)
            ipaddress.ip_address(host)
        except ValueError as exc:
            parser.error(f"--dns-server {value!r}: {exc}; give an IP address[:port]")
        out.append((host, port))
    return out


def check_domain_command(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    domain = normalize_domain(args.domain)
    if not is_domain_name(domain):
        parser.error(f"{args.domain!r} is not a domain name (A-labels: letters, digits, hyphens)")
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    if args.ca_file is not None:
        try:
            load_trust_store(args.ca_file)
        except TrustStoreError as exc:
            parser.error(str(exc))
    if args.dns_server:
        dnsx = Dns.configured(_nameservers(parser, args.dns_server), args.timeout)
    else:
        try:
            dnsx = Dns.system(args.timeout)
        except dns.resolver.NoResolverConfiguration:
            parser.error("no name server in /etc/resolv.conf: give --dns-server")
    dane = dane_config(parser, args)
    if dane is not None and args.no_probe:
        parser.error("--dane needs the MX probes: it checks the chain each one is served")

    async def probe_mx(target: Target) -> ProbeResult:
        if dane is None:
            return await probe(target, resolver=dnsx.addresses)
        return await probe_with_dane(target, lambda t: probe(t, resolver=dnsx.addresses), dane)

    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    checker = DomainChecker(
        domain,
        dnsx,
        ca_file=args.ca_file,
        timeout=args.timeout,
        probe_timeout=args.timeout,
        ehlo_name=args.ehlo_name,
        probe_fn=probe_mx,
        dane=dane is not None,
    )
    result = asyncio.run(checker.check(probe_mx=not args.no_probe))
    if args.json:
        print(json.dumps(to_json(result), indent=2))
    else:
        print(render_text(result))
    return 1 if problems(result) else 0
