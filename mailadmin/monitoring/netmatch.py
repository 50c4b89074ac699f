"""Which of a set of networks holds an address: the allowlist (blocks.py) and the named
networks (enrich.py) both ask this for every attempt, and mostly for the same addresses."""

from __future__ import annotations

import ipaddress

MEMO_MAX = 100_000  # bound of the per-address memos (cleared when full)


class NetworkTable:
    """Networks → values; `lookup` gives the value of the most specific network holding an
    address (None when none does), memoised per address for the life of the table."""

    def __init__(self, networks: dict | None = None):
        self.by_net: dict[str, object] = {}
        lengths: dict[int, set[int]] = {4: set(), 6: set()}
        for net, value in (networks or {}).items():
            self.by_net[str(net)] = value
            lengths[net.version].add(net.prefixlen)
        self.lengths = {version: sorted(found, reverse=True) for version, found in lengths.items()}
        # A replay or a busy day asks for the same few thousand addresses again and again,
        # each a dozen prefix parses without the memo.
        self.memo: dict = {}

    def lookup(self, addr):
        memo = self.memo
        if addr in memo:
            return memo[addr]
        found = None
        for length in self.lengths[addr.version]:
            found = self.by_net.get(str(ipaddress.ip_network(f"{addr}/{length}", strict=False)))
            if found is not None:
                break
        if len(memo) >= MEMO_MAX:
            memo.clear()
        memo[addr] = found
        return found
