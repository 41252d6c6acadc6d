"""DANE with the probe (exporter.dane.run) and in the service (exporter.service.dane_runner):
the TLSA lookup beside the probe, its bounds, every address, the log, and the scheduled probes.
The name server is scripted (tests/tlsa_responder.py); tests/test_dane_network.py and
tests/test_dane_service_e2e.py have the real resolver."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.rcode
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from exporter.config import load_config
from exporter.dane.config import DaneConfig
from exporter.dane.model import DaneReason
from exporter.dane.run import probe_with_dane, with_dane
from exporter.domains.check import DomainChecker
from exporter.domains.fetch import Dns
from exporter.domains.model import MxHost
from exporter.model import Phases, ProbeResult, Target
from exporter.service import manners
from exporter.service.dane_runner import DaneRunner
from exporter.service.main import Service
from tests.dane_certs import der, make_cert, record
from tests.tlsa_responder import TlsaResponder, tlsa_responder

HOST = "mx.example.test"
QNAME = f"_25._tcp.{HOST}"
LEAF = der(make_cert(HOST, ec.generate_private_key(ec.SECP256R1()), dns_names=[HOST]))
OTHER = der(make_cert(HOST, ec.generate_private_key(ec.SECP256R1()), dns_names=[HOST]))
TARGET = Target.create(HOST, 25, dane=True, timeout=5)
DEADLINE = 10.0

ProbeFn = Callable[[Target], Awaitable[ProbeResult]]


def served(target: Target, chain: tuple[bytes, ...] = (LEAF,), **more: object) -> ProbeResult:
    return ProbeResult(
        target=target,
        started_at=time.time(),
        success=True,
        chain_der=chain,
        phases=Phases(total=0.01),
        **more,  # type: ignore[arg-type]
    )


async def plain(target: Target) -> ProbeResult:
    return served(target)


def lookups() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("TLSA ")]


async def test_the_lookup_runs_beside_the_probe() -> None:
    async with tlsa_responder() as ns:
        ns.records = [record(3, 1, 1, LEAF)]

        async def probe_fn(target: Target) -> ProbeResult:
            # The query is out while the probe still runs: were the lookup to start after the
            # probe, this would wait for ever (and the test time out).
            await ns.asked.wait()
            return served(target)

        async with asyncio.timeout(DEADLINE):
            result = await probe_with_dane(TARGET, probe_fn, DaneConfig(ns.nameservers))
    assert result.dane is not None and result.dane.reason is DaneReason.OK, result.dane
    assert result.dane.match and result.dane.matched_depth == 0
    assert ns.queries == [QNAME]
    assert result.success and result.chain_der == (LEAF,)  # the probe's own result, unchanged


async def test_without_dane_the_probe_runs_alone() -> None:
    async with tlsa_responder() as ns:
        config = DaneConfig(ns.nameservers)
        plain_target = Target.create(HOST, 25)
        assert (await probe_with_dane(plain_target, plain, config)).dane is None
        # DANE asked for but not configured: the config refuses that; here it is a no-op
        assert (await probe_with_dane(TARGET, plain, DaneConfig())).dane is None
    assert ns.queries == []


async def test_one_lookup_judges_every_address() -> None:
    pool = dataclasses.replace(TARGET, all_addresses=True)

    async def probe_fn(target: Target) -> ProbeResult:
        good = served(target, (LEAF,), peer_address="192.0.2.1", address_family="ipv4")
        old = served(target, (OTHER,), peer_address="192.0.2.2", address_family="ipv4")
        return served(target, (), addresses=(good, old))

    async with tlsa_responder() as ns:
        ns.records = [record(3, 1, 1, LEAF)]
        result = await probe_with_dane(pool, probe_fn, DaneConfig(ns.nameservers))
    assert ns.queries == [QNAME]
    assert result.dane is None
    verdicts = {r.peer_address: r.dane.reason if r.dane else None for r in result.addresses}
    assert verdicts == {"192.0.2.1": DaneReason.OK, "192.0.2.2": DaneReason.MISMATCH}


async def test_a_probe_that_raises_or_is_cancelled_takes_the_lookup_with_it() -> None:
    async with tlsa_responder() as ns:
        ns.silent = True
        config = DaneConfig(ns.nameservers, timeout=30)

        async def broken(target: Target) -> ProbeResult:
            await ns.asked.wait()
            raise RuntimeError("probe bug")

        with pytest.raises(RuntimeError, match="probe bug"):
            await probe_with_dane(TARGET, broken, config)
        assert lookups() == []

        ns.asked.clear()

        async def endless(target: Target) -> ProbeResult:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        task = asyncio.create_task(probe_with_dane(TARGET, endless, config))
        await ns.asked.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert lookups() == []


async def test_the_lookup_is_bounded_by_the_targets_timeout() -> None:
    quick = dataclasses.replace(TARGET, timeout=0.3)
    async with tlsa_responder() as ns:
        ns.silent = True
        start = time.monotonic()
        result = await probe_with_dane(quick, plain, DaneConfig(ns.nameservers, timeout=30))
    assert result.dane is not None and result.dane.reason is DaneReason.TIMEOUT
    assert time.monotonic() - start < 2.0
    assert "0.3s" in result.dane.detail


async def test_extra_names_and_bogus_answers_come_through() -> None:
    target = dataclasses.replace(TARGET, dane_names=("example.test",))
    async with tlsa_responder() as ns:
        ns.rcode = dns.rcode.SERVFAIL
        result = await probe_with_dane(target, plain, DaneConfig(ns.nameservers, cd_retry=False))
    assert result.dane is not None and result.dane.reason is DaneReason.SERVFAIL
    assert result.dane.reference_names == (HOST, "example.test")
    assert not result.dane.tlsa_present and not result.dane.match


def test_a_lookup_that_raised_is_an_internal_error(caplog: pytest.LogCaptureFixture) -> None:
    result = with_dane(served(TARGET), TARGET, ValueError("lookup bug"))
    assert result.dane is not None and result.dane.reason is DaneReason.INTERNAL_ERROR
    assert result.dane.detail == "ValueError: lookup bug"
    (logged,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.exc_info is not None


def test_mx_hosts_of_a_domain_with_dane_carry_the_domain_as_a_name() -> None:
    resolver = Dns.configured([("127.0.0.1", 53)], 1.0)
    checker = DomainChecker("Example.TEST", resolver, dane=True)
    target = checker.mx_target(MxHost(HOST, 10))
    assert (target.dane, target.dane_names, target.port) == (True, ("example.test",), 25)
    plain_checker = DomainChecker("example.test", resolver)
    assert not plain_checker.mx_target(MxHost(HOST, 10)).dane


# -- the service ------------------------------------------------------------------------------


def warnings_and_infos(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.levelname, f"{r.getMessage()} {getattr(r, 'reason', '')}")
        for r in caplog.records
        if r.name == "exporter.service.dane_runner" and r.levelno >= logging.INFO
    ]


async def test_the_log_says_when_a_verdict_turns_bad_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with tlsa_responder() as ns:
        runner = DaneRunner(DaneConfig(ns.nameservers))

        async def step(records: list[bytes], secure: bool = True) -> None:
            ns.records = [record(3, 1, 1, r) for r in records]
            ns.secure = secure
            await runner.probe(TARGET, plain)

        await step([LEAF])  # ok: nothing to say
        await step([OTHER])  # the renewal with a new key, record not updated
        await step([OTHER])
        await step([OTHER], secure=False)  # another problem
        await step([LEAF])  # fixed
        await step([LEAF])
    assert warnings_and_infos(caplog) == [
        ("WARNING", "DANE check failed mismatch"),
        ("WARNING", "DANE check failed insecure"),
        ("INFO", "DANE check passes again ok"),
    ]
    passes = next(r for r in caplog.records if r.getMessage() == "DANE check passes again")
    assert passes.was == "insecure"  # type: ignore[attr-defined]
    failed = next(r for r in caplog.records if r.getMessage() == "DANE check failed")
    assert failed.target == HOST + ":25"  # type: ignore[attr-defined]
    assert failed.tlsa == QNAME  # type: ignore[attr-defined]
    assert "matches the served chain" in failed.detail  # type: ignore[attr-defined]
    assert any(r.getMessage() == "DANE check still failing" for r in caplog.records)


async def until(condition: Callable[[], object], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)  # poll interval of a condition with a deadline


def service_config(path: Path, ns: TlsaResponder, timeout: str = "5s") -> Path:
    host, port = ns.address
    path.write_text(
        f'dane: {{nameservers: ["{host}:{port}"], timeout: {timeout}}}\n'
        "defaults: {interval: 1h, timeout: 5s}\n"
        "targets:\n"
        f"  - {{name: dane, host: {HOST}, port: 25, dane: true}}\n"
        f"  - {{name: plain, host: {HOST}, port: 2525}}\n"
    )
    return path


async def test_scheduled_and_on_demand_probes_get_their_dane_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forced on-demand probes are normally 10 s apart (good manners): not what this test is about.
    monkeypatch.setattr(manners, "FORCE_MIN_SPACING", 0.0)
    async with tlsa_responder() as ns:
        ns.records = [record(3, 1, 1, LEAF)]
        path = service_config(tmp_path / "config.yml", ns)
        service = Service(load_config(str(path)), str(path), probe_fn=plain)
        await service.start()
        try:
            await until(lambda: len(service.snapshot().results) == 2, "both targets probed")
            results = service.snapshot().results
            assert results["plain"].dane is None
            dane = results["dane"].dane
            assert dane is not None and dane.reason is DaneReason.OK
            assert ns.queries == [QNAME]

            answer = await asyncio.to_thread(service.probe, "dane", None, True)
            on_demand = answer.result
            assert answer.cached_age is None
            assert on_demand.dane is not None and on_demand.dane.match
            assert ns.queries == [QNAME, QNAME]

            # a reload that changes only `dane:` takes effect at the next probe
            async with tlsa_responder() as other:
                other.records = [record(3, 1, 1, OTHER)]
                service_config(path, other)
                ok, message = await service.reload_async()
                assert ok, message
                again = (await asyncio.to_thread(service.probe, "dane", None, True)).result
                assert again.dane is not None and again.dane.reason is DaneReason.MISMATCH
                assert other.queries == [QNAME]
        finally:
            await service.stop()
