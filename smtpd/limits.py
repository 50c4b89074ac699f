"""Abuse limits that live in the smtpd process, and the shared send-rate counter.

The per-IP AUTH rate is counted per worker process (no round trip on the hot
path); with N workers behind SO_REUSEPORT an address gets at most N times the
configured rate. The per-mailbox send rate is shared by every worker and node
through the Django cache (Redis in production).
"""

import time

from django.core.cache import cache


class RateWindow:
    """At most `limit` hits per key in any fixed `window`-second slot; memory is bounded."""

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 100_000):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._slots: dict[str, tuple[int, int]] = {}

    def hit(self, key: str, now: float | None = None) -> bool:
        """Count one hit; False when the key is over its limit in this slot."""
        slot = int((time.monotonic() if now is None else now) // self.window)
        start, count = self._slots.get(key, (slot, 0))
        if start != slot:
            count = 0
        count += 1
        self._slots[key] = (slot, count)
        if len(self._slots) > self.max_keys:
            self._slots = {k: v for k, v in self._slots.items() if v[0] == slot}
        return count <= self.limit


def _sent_key(mailbox_id: int) -> str:
    return f"smtpd:sent:{mailbox_id}:{int(time.time() // 3600)}"


def messages_sent_this_hour(mailbox_id: int) -> int:
    return int(cache.get(_sent_key(mailbox_id), 0))


def count_message_sent(mailbox_id: int) -> int:
    key = _sent_key(mailbox_id)
    if cache.add(key, 1, timeout=3700):
        return 1
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=3700)
        return 1
