"""Successful password verifications answered from memory, kept exact by
PostgreSQL notifications (README "Mailboxes and credentials").

Triggers (accounts migration 0003) send a NOTIFY on `accounts_verify` whenever a
mailbox, app password, domain or password policy row changes. A listener thread
per process holds its own connection with LISTEN and drops the entries each
notification concerns ("mailbox:<id>": that mailbox's; anything else: all).
While that connection is not known to be alive the cache is not trusted: it is
emptied, answers nothing, accepts nothing, and the verifier reads the database
on every attempt, as it does on SQLite.

An entry holds everything a success depended on (mailbox, credential, stored hash,
state, the expiry time of the password or app password, the app password's
networks), so a hit needs no database read; the clock and the client's address
are checked again at each hit. Keys are (normalised address as given, HMAC of
the secret under a per-process random key): no secret is kept.

Races: a verification that read the database before a change and stores its
success after the change's notification was handled would store a stale entry.
`begin()` returns a sequence number taken before the read; `put()` refuses the
entry if anything it depends on was dropped (or the cache cleared, or trust
regained) since then.

The window that remains: between a change's COMMIT and the listener handling its
notification (normally well under a millisecond on one host) a hit can still
answer with the old state; and if the listener's connection hangs without
failing, hits continue until HEARTBEAT + STALE_AFTER has passed without a ping.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connections

from mailadmin.accounts import credentials

log = logging.getLogger(__name__)

CHANNEL = "accounts_verify"
APPLICATION_NAME = "mailadmin-verify-cache"  # in pg_stat_activity
# The listener waits this long for notifications, then pings its connection.
HEARTBEAT = 1.0
# The cache stops answering when the listener has not confirmed its connection for this long.
STALE_AFTER = 3.0
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
# Drops remembered for in-flight verifications; beyond this, all of them are refused.
MAX_DROPS = 10000

_KEY = os.urandom(32)


def secret_mac(secret: str) -> bytes:
    """HMAC-SHA256 of a secret under this process's random key (never leaves memory)."""
    return hmac.new(_KEY, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Entry:
    mailbox_id: int
    address: str  # the stored spelling, as the verifier reports it
    credential: str  # "password" | "app_password:<id>"
    app_password_id: int | None
    stored_hash: str
    state: str
    expires_at: datetime | None  # password expiry (policy max age) or the app password's expiry
    networks: tuple | None  # credentials.network_objects of the app password's networks; None: anywhere
    stored_at: float  # monotonic

    def usable(self, now: datetime, client_ip: str | None) -> bool:
        if self.state != "active" or (self.expires_at is not None and self.expires_at <= now):
            return False
        return credentials.networks_allow(self.networks, client_ip)


class VerifyCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, bytes], Entry] = OrderedDict()
        self._by_mailbox: dict[int, set[tuple[str, bytes]]] = {}
        self._seq = 0
        self._cleared_seq = 0
        self._dropped: dict[int, int] = {}
        self._live_until = 0.0
        self.listener: Listener | None = None

    # --- trust, set by the listener ---

    def live(self) -> bool:
        return time.monotonic() < self._live_until

    def trust(self) -> None:
        """The listener has just (re)started listening: start afresh, trusted."""
        with self._lock:
            self._clear_locked()
            self._live_until = time.monotonic() + STALE_AFTER

    def confirm(self) -> None:
        """The listener's connection answered and every notification sent before was handled."""
        self._live_until = time.monotonic() + STALE_AFTER

    def distrust(self) -> None:
        with self._lock:
            self._live_until = 0.0
            self._clear_locked()

    # --- invalidation ---

    def invalidate(self, payload: str) -> None:
        kind, _, value = payload.partition(":")
        if kind == "mailbox" and value.isdigit():
            self.drop_mailbox(int(value))
        else:
            self.clear()

    def drop_mailbox(self, mailbox_id: int) -> None:
        with self._lock:
            self._seq += 1
            if len(self._dropped) >= MAX_DROPS:
                self._dropped.clear()
                self._cleared_seq = self._seq
            self._dropped[mailbox_id] = self._seq
            for key in self._by_mailbox.pop(mailbox_id, ()):
                self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        self._seq += 1
        self._cleared_seq = self._seq
        self._dropped.clear()
        self._entries.clear()
        self._by_mailbox.clear()

    # --- use ---

    def begin(self) -> int:
        """Call before reading what a success depends on; pass the result to put()."""
        return self._seq

    def put(self, since: int, name: str, secret: str, entry: Entry) -> bool:
        size, ttl = settings.VERIFY_CACHE_SIZE, settings.VERIFY_CACHE_TTL
        if size <= 0 or ttl <= 0 or not self.live():
            return False
        key = (name, secret_mac(secret))
        with self._lock:
            if since < self._cleared_seq or self._dropped.get(entry.mailbox_id, 0) > since:
                return False  # something this success read may have changed since
            old = self._entries.pop(key, None)
            if old is not None:
                self._by_mailbox.get(old.mailbox_id, set()).discard(key)
            self._entries[key] = entry
            self._by_mailbox.setdefault(entry.mailbox_id, set()).add(key)
            while len(self._entries) > size:
                old_key, old = self._entries.popitem(last=False)
                self._by_mailbox.get(old.mailbox_id, set()).discard(old_key)
        return True

    def get(self, name: str, secret: str, now: datetime, client_ip: str | None) -> Entry | None:
        """The entry if this secret succeeded for this name and still would now; else None."""
        if not self.live():
            return None
        key = (name, secret_mac(secret))
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry.stored_at > settings.VERIFY_CACHE_TTL or not entry.usable(now, client_ip):
            return None
        return entry

    def __len__(self):
        return len(self._entries)


cache = VerifyCache()


def listen_enabled() -> bool:
    # (The engine from settings: touching connections["default"] here would give the
    # calling thread, the smtpd's event loop, a connection object of its own.)
    engine = settings.DATABASES["default"]["ENGINE"]
    return bool(settings.VERIFY_CACHE_LISTEN) and engine.startswith("django.db.backends.postgresql")


class Listener(threading.Thread):
    """LISTEN on its own connection (Django's connection parameters, psycopg's notifies())."""

    def __init__(self, target: VerifyCache):
        super().__init__(name="verify-cache-listener", daemon=True)
        self.target = target
        self.stopping = threading.Event()
        self.connection = None
        self.backend_pid: int | None = None
        self.listened = False

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self.listened = False
            try:
                self._listen()
            except Exception as exc:
                if not self.stopping.is_set():
                    log.warning("verify cache: listener connection lost (%s); cache off until it is back", _short(exc))
            finally:
                self.target.distrust()
                self._close()
            failures = 0 if self.listened else failures + 1
            self.stopping.wait(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)])

    def _listen(self) -> None:
        import psycopg

        params = connections["default"].get_connection_params()
        # A dead peer is noticed by the keepalives (or the ping) within seconds, not TCP's minutes.
        params.update(autocommit=True, connect_timeout=5, keepalives=1, keepalives_idle=5, keepalives_interval=2)
        params.update(keepalives_count=2, application_name=APPLICATION_NAME)
        conn = self.connection = psycopg.Connection.connect(**params)
        conn.execute(f"LISTEN {CHANNEL}")
        self.backend_pid = conn.info.backend_pid
        self.listened = True
        self.target.trust()
        log.info("verify cache: listening on %s", CHANNEL)
        while not self.stopping.is_set():
            for notify in conn.notifies(timeout=HEARTBEAT):
                self.target.invalidate(notify.payload)
            conn.execute("SELECT 1")
            # Notifications that arrived during the ping were kept for the next call.
            for notify in conn.notifies(timeout=0):
                self.target.invalidate(notify.payload)
            self.target.confirm()

    def _close(self) -> None:
        conn, self.connection, self.backend_pid = self.connection, None, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken
                conn.close()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        self.target.distrust()
        self.join(timeout)


def _short(exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def start() -> Listener | None:
    """Start this process's listener (the smtpd calls it in each worker); None if off."""
    if not listen_enabled():
        return None
    if cache.listener is None or not cache.listener.is_alive():
        cache.listener = Listener(cache)
        cache.listener.start()
    return cache.listener


def stop() -> None:
    listener, cache.listener = cache.listener, None
    if listener is not None:
        listener.stop()
