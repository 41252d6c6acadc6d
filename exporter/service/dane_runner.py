"""DANE in the running exporter: every probe of a target (or MX host) with `dane` gets its check.

The check runs with the probe (exporter.dane.run: the TLSA lookup beside it, bounded by the
target's timeout) and its result travels on the probe's result (`ProbeResult.dane`), so the
state, the collector, /debug and the domain results see the two together, and a target or MX
host that goes away takes its DANE result with it.

The log says when an endpoint's DANE verdict turns bad, once: one WARNING line (`DANE check
failed`, with `reason` and `detail`) when the reason becomes one other than ok and no_tlsa or
changes to another such reason, DEBUG while it stays, one INFO line (`DANE check passes
again`) when it recovers. Nothing here raises into the scheduler: a bug is logged with its
traceback and the probe's result stands.
"""

from __future__ import annotations

import logging

from exporter.dane.config import DaneConfig
from exporter.dane.model import DaneReason, DaneResult
from exporter.dane.report import FINE
from exporter.dane.run import ProbeFn, probe_with_dane
from exporter.model import ProbeResult, Target

log = logging.getLogger(__name__)

_Key = tuple[str, str, str]  # target name, domain, address


class DaneRunner:
    """`probe()` wraps a probe function; `config` may be replaced at any time (a reload)."""

    def __init__(self, config: DaneConfig) -> None:
        self.config = config
        self._failing: dict[_Key, DaneReason] = {}  # endpoints whose last verdict was a problem

    async def probe(self, target: Target, probe_fn: ProbeFn) -> ProbeResult:
        result = await probe_with_dane(target, probe_fn, self.config)
        try:
            self._log(target, result)
        except Exception:
            log.exception("logging a DANE result failed", extra={"target": target.name})
        return result

    def _log(self, target: Target, result: ProbeResult) -> None:
        for one in result.addresses or (result,):
            if one.dane is not None:
                self._transition(target, one.peer_address if result.addresses else None, one.dane)

    def _transition(self, target: Target, address: str | None, dane: DaneResult) -> None:
        domain = dict(target.labels).get("domain", "")
        key = (target.name, domain, address or "")
        fields: dict[str, object] = {"target": target.name}
        if domain:
            fields["domain"] = domain
        if address:
            fields["address"] = address
        fields.update(tlsa=dane.tlsa_name, reason=str(dane.reason))
        before = self._failing.get(key)
        if dane.reason in FINE:
            if before is not None:
                del self._failing[key]
                log.info("DANE check passes again", extra={**fields, "was": str(before)})
            return
        self._failing[key] = dane.reason
        fields["detail"] = dane.detail
        if before is dane.reason:
            log.debug("DANE check still failing", extra=fields)
        else:
            log.warning("DANE check failed", extra=fields)
