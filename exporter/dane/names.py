"""Name checks for DANE-TA(2) (RFC 7672 section 3.2.3): does the leaf name the MX host?

Rules, as RFC 7672 section 3.2.3 sets them for SMTP:
- the certificate's DNS-ID subjectAltNames are the presented identifiers; only when it has none
  is the subject's common name used (the legacy fallback RFC 7672 keeps for SMTP);
- comparison is case-insensitive on A-labels, a final dot ignored;
- a wildcard is only a whole leftmost label `*`, it matches exactly one label, and it must be
  followed by at least two labels (`*.example.com`, never `*.com` or `*`); partial-label
  wildcards (`mx*.example.com`) match nothing.
DANE-EE(3) does no name check at all (RFC 7672 section 3.1.1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.x509.oid import NameOID


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def name_matches(presented: str, reference: str) -> bool:
    """Whether one presented identifier covers one reference identifier."""
    pattern = normalize(presented)
    name = normalize(reference)
    if not pattern or not name:
        return False
    if not pattern.startswith("*."):
        return "*" not in pattern and pattern == name
    rest = pattern[2:]
    if "*" in rest or "." not in rest:
        return False
    label, dot, parent = name.partition(".")
    return bool(label) and bool(dot) and parent == rest


def presented_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS-ID subjectAltNames, or the subject CNs when there is no DNS-ID. Unreadable: ()."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_ids = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_ids = ()
    except ValueError:
        return ()
    if dns_ids:
        return dns_ids
    try:
        attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return ()
    return tuple(str(a.value) for a in attrs)


def matches_any(cert: x509.Certificate, references: Sequence[str]) -> bool:
    """Whether the certificate names one of the reference identifiers."""
    presented = presented_names(cert)
    return any(name_matches(p, r) for p in presented for r in references)


def reference_names(mx_host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The MX host name first, then extra names (e.g. the next-hop domain), each once."""
    out: dict[str, None] = {}
    for name in (mx_host, *extra):
        n = normalize(name)
        if n:
            out.setdefault(n, None)
    return tuple(out)
