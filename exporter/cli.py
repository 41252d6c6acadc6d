"""Command line: `probe` and `check-domain` for one-shot checks; else the exporter service."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from exporter import __version__
from exporter.checks.model import CheckName
from exporter.checks.report import CheckReport, checks_json, render_checks
from exporter.checks.run import run_checks
from exporter.model import (
    Checks,
    Mode,
    ProbeResult,
    Stage,
    Target,
    VerifyPolicy,
    parse_host_port,
)
from exporter.probe import probe
from exporter.report import render_text, to_json
from exporter.tls.verify import TrustStoreError, load_trust_store


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "probe":
        return probe_command(args[1:])
    if args and args[0] == "check-domain":
        from exporter.domains.command import check_domain_command

        return check_domain_command(args[1:])
    from exporter.service.main import serve_command

    return serve_command(args)


def _probe_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smtp-tls-exporter probe",
        description="Probe one SMTP endpoint once and report what happened on the wire.",
    )
    p.add_argument("endpoint", metavar="HOST[:PORT]", help="port defaults to 25")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="default: from the port")
    p.add_argument("--server-name", help="SNI and expected certificate name (default: HOST)")
    p.add_argument("--ca-file", help="PEM trust anchors (default: the system store)")
    p.add_argument("--verify", choices=[v.value for v in VerifyPolicy], help="default: from port")
    p.add_argument("--ehlo-name", help="name to send in EHLO (default: this machine's FQDN)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for the whole probe")
    p.add_argument(
        "--all-addresses",
        action="store_true",
        help="probe every A and AAAA of HOST on its own (docs/checks.md)",
    )
    p.add_argument(
        "--check",
        action="append",
        default=[],
        choices=[c.value for c in CheckName],
        help="after the probe, run this opt-in check too (repeatable; docs/checks.md)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--version", action="version", version=f"smtp-tls-exporter {__version__}")
    return p


def probe_command(argv: list[str]) -> int:
    parser = _probe_parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    try:
        host, port = parse_host_port(args.endpoint, default_port=25)
    except ValueError as exc:
        parser.error(str(exc))
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.ca_file is not None:
        try:
            load_trust_store(args.ca_file)
        except TrustStoreError as exc:
            parser.error(str(exc))
    target = Target.create(
        host,
        port,
        mode=Mode(args.mode) if args.mode else None,
        verify=VerifyPolicy(args.verify) if args.verify else None,
        server_name=args.server_name,
        ehlo_name=args.ehlo_name,
        ca_file=args.ca_file,
        timeout=args.timeout,
        all_addresses=args.all_addresses,
        checks=Checks(**dict.fromkeys(args.check, True)),
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result, checks = asyncio.run(_probe_and_check(target))
    if args.json:
        print(json.dumps({**to_json(result), "checks": checks_json(checks)}, indent=2))
    else:
        print(render_text(result))
        if checks:
            print("\n" + render_checks(checks))
    return 0 if result.success else 1


async def _probe_and_check(target: Target) -> tuple[ProbeResult, CheckReport]:
    """The probe, then (if asked) the checks at each address it probed, or where it connected."""
    result = await probe(target)
    if not target.checks.enabled:
        return result, []
    where: list[str | None]
    if target.all_addresses:
        where = [r.peer_address for r in result.addresses if r.peer_address]
    else:
        reached = result.failure is None or result.failure.stage not in (
            Stage.RESOLVE,
            Stage.CONNECT,
        )
        where = [result.peer_address if reached else None]
    return result, [(address, await run_checks(target, address)) for address in where]
