"""The memo of served chains: parsed once, verified again only when the outcome could change."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from exporter.tls import chaincache
from exporter.tls.verify import load_trust_store
from tests.fixtures.certs import SERVER_NAME, TestPKI


def _chain(tmp_path: Path) -> tuple[list[bytes], str, float]:
    pki = TestPKI()
    leaf = pki.leaf()
    ca = str(pki.write_ca_bundle(tmp_path / "ca.pem"))
    ders = [leaf.cert.public_bytes(Encoding.DER), pki.intermediate.cert.public_bytes(Encoding.DER)]
    return ders, ca, leaf.not_after


def test_one_parse_per_distinct_chain(tmp_path: Path) -> None:
    ders, _, _ = _chain(tmp_path)
    first = chaincache.read_chain(ders)
    again = chaincache.read_chain([bytes(bytearray(d)) for d in ders])  # equal, not the same
    assert again is first
    # Results keep the chain's DER: probes that saw the same chain share one copy.
    assert first.der == tuple(ders)
    assert first.facts[0].subject_cn == SERVER_NAME
    assert chaincache.read_chain(ders[:1]) is not first


def test_verification_reused_until_a_validity_boundary(tmp_path: Path) -> None:
    ders, ca, not_after = _chain(tmp_path)
    trust = load_trust_store(ca)
    chain = chaincache.read_chain(ders)
    now = dt.datetime.now(dt.UTC).timestamp()
    ok = chaincache.verify_chain(chain, SERVER_NAME, trust, now)
    assert ok.trusted and ok.hostname_match
    assert chaincache.verify_chain(chain, SERVER_NAME, trust, now + 60) is ok
    # Another name is another question.
    other = chaincache.verify_chain(chain, "other.example.test", trust, now)
    assert not other.hostname_match
    # Past the leaf's notAfter the memo is not used: the chain has expired.
    expired = chaincache.verify_chain(chain, SERVER_NAME, trust, not_after + 1)
    assert not expired.trusted
    assert str(expired.reason) == "expired"
