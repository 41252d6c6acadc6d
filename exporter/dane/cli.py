"""The `--dane` and `--dane-server` flags of the `probe` and `check-domain` commands."""

from __future__ import annotations

import argparse
import ipaddress

from exporter.dane.config import DANE_PORT, DaneConfig
from exporter.model import Mode, parse_host_port


def add_dane_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--dane",
        action="store_true",
        help=f"check DANE (RFC 7672) for {what}: the TLSA records at _25._tcp.HOST, from "
        "--dane-server, against the served chain; a verdict other than ok and no_tlsa makes "
        "the exit status 1 (docs/dane.md)",
    )
    p.add_argument(
        "--dane-server",
        action="append",
        default=[],
        metavar="IP[:PORT]",
        help="a DNSSEC-validating resolver to ask for TLSA records, port 53 by default; "
        "repeatable, required with --dane (the system's resolver is not used: DANE trusts "
        "the resolver's AD bit)",
    )


def dane_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> DaneConfig | None:
    """The DANE settings the flags ask for; None without --dane. Exits 2 on bad usage."""
    if not args.dane:
        if args.dane_server:
            parser.error("--dane-server is only used with --dane")
        return None
    if not args.dane_server:
        parser.error("--dane needs --dane-server: the IP address of a DNSSEC-validating resolver")
    servers = []
    for value in args.dane_server:
        try:
            host, port = parse_host_port(value, default_port=53)
            ipaddress.ip_address(host)
        except ValueError as exc:
            parser.error(f"--dane-server {value!r}: {exc}; give an IP address[:port]")
        servers.append((host, port))
    return DaneConfig(tuple(dict.fromkeys(servers)))


def check_dane_endpoint(parser: argparse.ArgumentParser, host: str, port: int, mode: Mode) -> None:
    """`probe --dane` is for an MX host: a name, port 25, STARTTLS."""
    if port != DANE_PORT or mode is not Mode.STARTTLS:
        parser.error("--dane: only for port 25 with STARTTLS (DANE for SMTP, RFC 7672)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    parser.error(f"--dane needs a host name: TLSA records are looked up at _25._tcp.{host}")
