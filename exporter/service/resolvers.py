"""The DNS the running exporter uses, from the config's `dns:` section, for probes and domains.

With `dns.nameservers` set, every lookup goes to those servers: the host names of targets, the
MX hosts of mail domains, the MX and TXT records and the policy host. Without, endpoint probes use
the system's getaddrinfo and domain checks the name servers of /etc/resolv.conf.
"""

from __future__ import annotations

import logging

import dns.asyncresolver
import dns.resolver

from exporter.domains.config import DnsConfig
from exporter.domains.fetch import Dns
from exporter.resolve import DnsResolver, Resolver, system_resolve

log = logging.getLogger(__name__)


def endpoint_resolver(config: DnsConfig) -> Resolver | None:
    """What probes resolve host names with; None: the system's getaddrinfo."""
    if not config.nameservers:
        return None
    return DnsResolver(config.nameservers, config.timeout)


def domain_dns(config: DnsConfig) -> Dns:
    """What domain checks look records up with."""
    if config.nameservers:
        return Dns.configured(config.nameservers, config.timeout)
    try:
        return Dns.system(config.timeout)
    except dns.resolver.NoResolverConfiguration as exc:
        # A container without resolv.conf: each lookup then fails (dns_error), the exporter runs.
        log.error(
            "no name server in /etc/resolv.conf: mail domain lookups will fail; "
            "set dns.nameservers in the config",
            extra={"error": str(exc)},
        )
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = []
        resolver.lifetime = config.timeout
        return Dns(resolver, system_resolve)
