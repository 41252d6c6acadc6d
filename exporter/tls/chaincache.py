"""Memo of what a served chain says: its certificate facts, and its verification for one name.

Servers serve the same chain probe after probe, and many endpoints of one operator serve the same
chain; parsing it and running the X.509 verifier again each time costs more CPU than the TLS
handshake's own certificate work. The memo is keyed by the SHA-256 of the served DER chain, so
a changed certificate is a new key; a verification outcome is reused only for the same server name
and the same trust store object (a CA file that changed on disk loads as a new one), and only until
the next moment at which a certificate of the chain starts or stops being valid, or for
VERIFY_TTL at most. Both maps are bounded LRU caches.
"""

from __future__ import annotations

import datetime
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509

from exporter.model import CertFacts, Verification
from exporter.tls import certs
from exporter.tls.verify import TrustStore, verify

MAX_CHAINS = 20_000
VERIFY_TTL = 3600.0  # seconds


@dataclass(frozen=True)
class Chain:
    key: bytes  # SHA-256 over the served DER certificates
    facts: tuple[CertFacts, ...]  # of the readable prefix of the chain, leaf first
    loaded: tuple[x509.Certificate, ...]  # the same certificates, parsed
    problem: str | None  # why reading stopped early (an unreadable certificate), or None
    boundaries: tuple[float, ...]  # every notBefore and notAfter in the chain, unix seconds
    # The served DER certificates (all of them), shared by every result that saw this chain
    # rather than a copy per probe.
    der: tuple[bytes, ...] = ()


K = TypeVar("K")
V = TypeVar("V")


class _Lru(OrderedDict[K, V]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


_chains: _Lru[bytes, Chain] = _Lru(MAX_CHAINS)
_verified: _Lru[tuple[bytes, str, int], tuple[TrustStore, float, Verification]] = _Lru(MAX_CHAINS)
# The trust anchors' own notBefore/notAfter, per trust store object (the verifier checks them too).
_anchor_bounds: dict[int, tuple[TrustStore, tuple[float, ...]]] = {}
stats = {"chain_hits": 0, "chain_misses": 0, "verify_hits": 0, "verify_misses": 0}


def read_chain(ders: Sequence[bytes]) -> Chain:
    """The facts of a served chain (leaf first), parsed once per distinct chain."""
    h = hashlib.sha256()
    for der in ders:
        h.update(len(der).to_bytes(4, "big"))
        h.update(der)
    key = h.digest()
    chain = _chains.get(key)
    if chain is not None:
        _chains.move_to_end(key)
        stats["chain_hits"] += 1
        return chain
    stats["chain_misses"] += 1
    loaded: list[x509.Certificate] = []
    facts: list[CertFacts] = []
    problem = None
    for der in ders:
        try:
            cert = x509.load_der_x509_certificate(der)
            facts.append(certs.describe_loaded(cert, der))
        except (ValueError, x509.InvalidVersion) as exc:
            problem = str(exc)
            break
        loaded.append(cert)
    bounds = tuple(sorted({t for f in facts for t in (f.not_before, f.not_after)}))
    chain = Chain(key, tuple(facts), tuple(loaded), problem, bounds, tuple(ders))
    _chains.put(key, chain)
    return chain


def _anchors(trust: TrustStore) -> tuple[float, ...]:
    cached = _anchor_bounds.get(id(trust))
    if cached is not None and cached[0] is trust:
        return cached[1]
    bounds: set[float] = set()
    for cert in trust.certs:
        bounds.add(cert.not_valid_before_utc.timestamp())
        bounds.add(cert.not_valid_after_utc.timestamp())
    result = tuple(sorted(bounds))
    if len(_anchor_bounds) > 64:
        _anchor_bounds.clear()
    _anchor_bounds[id(trust)] = (trust, result)
    return result


def verify_chain(chain: Chain, server_name: str, trust: TrustStore, now: float) -> Verification:
    """verify() of the chain, or the memo of it while nothing it depends on can have changed."""
    key = (chain.key, server_name, id(trust))
    cached = _verified.get(key)
    if cached is not None:
        store, until, outcome = cached
        if store is trust and now < until:
            stats["verify_hits"] += 1
            return outcome
    stats["verify_misses"] += 1
    when = datetime.datetime.fromtimestamp(now, datetime.UTC)
    outcome = verify(list(chain.loaded), server_name, trust, when)
    until = now + VERIFY_TTL
    for bounds in (chain.boundaries, _anchors(trust)):
        later = [t for t in bounds if t > now]
        if later:
            until = min(until, later[0])
    _verified.put(key, (trust, until, outcome))
    return outcome
