"""Which targets and mail domains one replica owns when the config is split over N exporters.

`--shard.count N --shard.index I`: a target belongs to shard `hashmod(name, N)`, a mail domain
(with its MX hosts, which it probes) to `hashmod(domain, N)`, where `hashmod` is exactly
Prometheus' relabel action of that name (model/relabel/relabel.go): the MD5 digest of the value,
its last 8 bytes read as a big-endian unsigned 64-bit integer, modulo N. So a Prometheus
`hashmod` relabelling on the `target` label routes each name to the replica that owns it
(docs/sharding.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from exporter.config import Config


def hashmod(value: str, modulus: int) -> int:
    """Prometheus' `hashmod` of a label value: 0 <= result < modulus."""
    if modulus < 1:
        raise ValueError(f"modulus {modulus} is not a positive integer")
    digest = hashlib.md5(value.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


@dataclass(frozen=True)
class Shard:
    """One replica's part: `index` of `count` (0 of 1, the default, owns everything)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"--shard.count: {self.count} is not a positive integer")
        if not 0 <= self.index < self.count:
            raise ValueError(
                f"--shard.index: {self.index} is not between 0 and {self.count - 1} "
                f"(--shard.count is {self.count})"
            )

    @classmethod
    def from_flags(cls, index: int | None, count: int) -> Shard:
        """The shard the flags name; ValueError naming the flag when they do not name one.

        With more than one shard the index must be given: a forgotten `--shard.index` on
        every replica would make them all probe shard 0 and nobody the rest."""
        if count > 1 and index is None:
            raise ValueError(f"--shard.index: required with --shard.count {count}")
        return cls(0 if index is None else index, count)

    @property
    def sharded(self) -> bool:
        return self.count > 1

    def owns(self, name: str) -> bool:
        return self.count == 1 or hashmod(name, self.count) == self.index

    def part(self, config: Config) -> Config:
        """The config with only this shard's targets and mail domains."""
        if not self.sharded:
            return config
        return dataclasses.replace(
            config,
            targets=tuple(t for t in config.targets if self.owns(t.name)),
            domains=tuple(d for d in config.domains if self.owns(d.name)),
        )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
