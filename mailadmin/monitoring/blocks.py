"""Block decisions for the smtpd, and creating blocks with escalation.

    decision = check_source("203.0.113.9", "ann@a.example")
    if decision.blocked: ...reply 454/535 without verifying the credential

`check_source` is synchronous and cheap: it answers from an in-process snapshot
of active blocks and the allowlist. Every change to a Block or AllowedNetwork
bumps a version stamp in the Django cache (Redis in production, a file cache in
development); each process polls the stamp at most every POLL_SECONDS and
reloads the snapshot when it changed, so a block made by any worker is enforced
by every smtpd process within a second. If the cache is unreachable the
snapshot is still reloaded from the database every FALLBACK_RELOAD_SECONDS.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from mailadmin.monitoring.netmatch import NetworkTable

log = logging.getLogger(__name__)

VERSION_KEY = "monitoring:blocks:version"
# A Redis GET per process at most this often while AUTHs arrive; bounds the smtpd's
# share of the failed-AUTH-to-block latency (bench/latency.py).
POLL_SECONDS = 0.1
FALLBACK_RELOAD_SECONDS = 5.0
# The smtpd's event loop answers from a snapshot at most this old (check_source_if_fresh),
# while a pool thread polls in the background (refresh_due): never a wait on the loop.
LOOP_MAX_AGE = 1.0
FULL_RELOAD_SECONDS = 60.0

BASE_BLOCK = timedelta(minutes=15)
MAX_BLOCK = timedelta(days=7)
# A repeat offence within this long after the previous block escalates.
ESCALATION_MEMORY = timedelta(days=7)


@dataclass(frozen=True)
class Decision:
    blocked: bool
    allowlisted: bool
    block_id: int | None
    reason: str


ALLOW = Decision(blocked=False, allowlisted=False, block_id=None, reason="")


def prefix_of(ip: str) -> str:
    """The configured network prefix of an address: /24 for IPv4, /64 for IPv6 by default."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        length = getattr(settings, "MONITORING_PREFIX_V4", 24)
    else:
        length = getattr(settings, "MONITORING_PREFIX_V6", 64)
    return _network_text(addr, length)


@functools.lru_cache(maxsize=65536)
def _network_text(addr, length) -> str:
    # Every event asks this; the same addresses come back all day.
    return str(ipaddress.ip_network(f"{addr}/{length}", strict=False))


def bump_version() -> None:
    """Tell every process that blocks or the allowlist changed (call after any change)."""
    try:
        cache.set(VERSION_KEY, time.time_ns(), timeout=None)
    except Exception:  # the cache being down must not fail a block; the fallback reload covers it
        log.warning("blocks: could not bump the version stamp in the cache", exc_info=True)
    _snapshot.mark_changed()


def announce_change() -> None:
    """Bump the stamp now (this process and tests see the change at once) and again after
    the surrounding transaction commits: a process that polled between the first bump and
    the commit reloaded without the change, and would otherwise keep that snapshot until
    the next change or the full reload (FULL_RELOAD_SECONDS) — a block unenforced for a minute."""
    bump_version()
    transaction.on_commit(bump_version)


@dataclass
class _Entry:
    block_id: int
    expires_at: datetime
    reason: str


class _Snapshot:
    def __init__(self):
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._polled_at = 0.0
        self._version = None
        self.ips: dict[str, _Entry] = {}
        self.prefixes: dict[str, _Entry] = {}
        self.prefix_lengths: dict[int, set[int]] = {4: set(), 6: set()}
        self.ip_users: dict[tuple[str, str], _Entry] = {}
        # network → allowlist note; replaced (with its per-address memo) on every load.
        self.allowlist = NetworkTable()

    def invalidate_local(self):
        """Reload at the next check (tests; a fresh database)."""
        self._polled_at = 0.0
        self._version = object()  # never equal to a real stamp

    def mark_changed(self):
        """This process changed something: reload at the next poll, like every other process."""
        self._version = object()

    def _read_version(self):
        return cache.get(VERSION_KEY)

    def age(self) -> float:
        """Seconds since the last poll (infinite before the first load)."""
        return time.monotonic() - self._polled_at if self._loaded_at else float("inf")

    def ensure_fresh(self):
        now = time.monotonic()
        if now - self._polled_at < POLL_SECONDS:
            return
        # One thread polls; the others go on with the snapshot they have (as they would
        # have a moment earlier) instead of queueing behind its cache round trip. Until
        # the first load there is nothing to go on with: everyone waits for it.
        if not self._lock.acquire(blocking=not self._loaded_at):
            return
        try:
            if now - self._polled_at < POLL_SECONDS:
                return
            self._polled_at = now
            try:
                version = self._read_version()
                stale = version != self._version or now - self._loaded_at > FULL_RELOAD_SECONDS
            except Exception:
                log.warning("blocks: cache unreachable, reloading from the database", exc_info=True)
                version = None
                stale = now - self._loaded_at > FALLBACK_RELOAD_SECONDS
            if stale:
                self._load()
                self._version = version
                self._loaded_at = now
        finally:
            self._lock.release()

    def _load(self):
        from mailadmin.monitoring.models import AllowedNetwork, Block

        ips, prefixes, ip_users = {}, {}, {}
        prefix_lengths = {4: set(), 6: set()}
        for block in Block.objects.active().order_by("expires_at"):
            entry = _Entry(block.pk, block.expires_at, block.reason)
            if block.kind == Block.Kind.IP:
                ips[block.value] = entry
            elif block.kind == Block.Kind.PREFIX:
                try:
                    net = ipaddress.ip_network(block.value, strict=False)
                except ValueError:
                    continue
                prefixes[str(net)] = entry
                prefix_lengths[net.version].add(net.prefixlen)
            else:
                ip_users[(block.value, block.username.lower())] = entry
        allowed = {}
        for net_text, note in AllowedNetwork.objects.values_list("cidr", "note"):
            try:
                allowed[ipaddress.ip_network(net_text, strict=False)] = note or "allowlisted"
            except ValueError:
                continue
        self.ips, self.prefixes, self.ip_users = ips, prefixes, ip_users
        self.prefix_lengths = prefix_lengths
        self.allowlist = NetworkTable(allowed)

    def allowlist_note(self, addr) -> str | None:
        return self.allowlist.lookup(addr)


_snapshot = _Snapshot()


def is_allowlisted(client_ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    _snapshot.ensure_fresh()
    return _snapshot.allowlist_note(addr) is not None


def check_source(client_ip: str, username: str | None) -> Decision:
    """Is this client (and user) blocked right now? Allowlisted networks always win."""
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return ALLOW
    _snapshot.ensure_fresh()
    return _decide(addr, username)


def check_source_if_fresh(client_ip: str, username: str | None) -> Decision | None:
    """check_source without any I/O (for an event loop): None when the snapshot was
    last polled more than LOOP_MAX_AGE ago (or never loaded); then call check_source.
    The caller keeps it polled: refresh() on a thread whenever refresh_due()."""
    if _snapshot.age() > LOOP_MAX_AGE:
        return None
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return ALLOW
    return _decide(addr, username)


def refresh_due() -> bool:
    return _snapshot.age() >= POLL_SECONDS


def refresh() -> None:
    _snapshot.ensure_fresh()


def _decide(addr, username: str | None) -> Decision:
    snap = _snapshot
    note = snap.allowlist_note(addr)
    if note is not None:
        return Decision(blocked=False, allowlisted=True, block_id=None, reason=f"allowlisted: {note}")
    now = timezone.now()
    ip = str(addr)
    candidates = [snap.ips.get(ip)]
    if username:
        candidates.append(snap.ip_users.get((ip, username.lower())))
    for length in snap.prefix_lengths[addr.version]:
        candidates.append(snap.prefixes.get(str(ipaddress.ip_network(f"{addr}/{length}", strict=False))))
    for entry in candidates:
        if entry is not None and entry.expires_at > now:
            return Decision(blocked=True, allowlisted=False, block_id=entry.block_id, reason=entry.reason)
    return ALLOW


# (kind, value, username) → the block this process last made or found for it: lets a
# detector that re-confirms an ongoing attack every minute skip the database while
# the block runs. Lifting a block early is rare; a lifted one is re-made at expiry.
_recent: dict[tuple, object] = {}
_RECENT_MAX = 50_000


def block_duration(escalation: int) -> timedelta:
    return min(BASE_BLOCK * (2**escalation), MAX_BLOCK)


class BlockReads:
    """create_block's reads for many targets at once (a detector's slice of an attack made one
    locked read per target): the targets' blocks that can matter at `earliest` or later, locked,
    and the allowlist. Only for calls inside the transaction that made it, with now >= earliest."""

    def __init__(self, targets, earliest):
        self.targets = {(kind, value, username or "") for kind, value, username in targets}
        self.earliest = earliest
        self.blocks = None  # read at the first call that needs it (most re-confirm a known block)
        self.allowed = None

    def _load(self):
        from mailadmin.monitoring.models import Block

        if self.blocks is not None:
            return
        self.allowed = _allowed_networks()
        self.blocks = {key: [] for key in self.targets}
        for block in (
            Block.objects.select_for_update()
            .filter(
                kind__in=sorted({t[0] for t in self.targets}),
                value__in=sorted({t[1] for t in self.targets}),
                expires_at__gte=self.earliest - ESCALATION_MEMORY,
            )
            .order_by("pk")
        ):
            found = self.blocks.get((block.kind, block.value, block.username))
            if found is not None:
                found.append(block)

    def allowlist_covers(self, value: str) -> bool:
        self._load()
        return _covered(value, self.allowed)

    def same(self, key, now):
        """What create_block's locked read of this target would return at `now`."""
        self._load()
        same = [b for b in self.blocks[key] if b.expires_at >= now - ESCALATION_MEMORY]
        return sorted(same, key=lambda b: (-b.expires_at.timestamp(), b.pk))


def create_block(kind, value, *, reason, rule="", username="", alert=None, now=None, reads=None):
    """Block a source, escalating repeat offenders (15 min, doubling, at most a week).

    Returns the Block, or None when the source is allowlisted. If an active block
    already covers the same target it is returned unchanged (no double escalation
    while one block is running). `reads`: a BlockReads of the caller's transaction (its one read
    of many targets answers for this one).
    """
    from mailadmin.monitoring.models import Block

    now = now or timezone.now()
    key = (kind, value, username or "")
    known = _recent.get(key)
    if known is not None and known.created <= now < known.expires_at:
        return known
    if reads is not None and key not in reads.targets:
        reads = None
    if reads.allowlist_covers(value) if reads is not None else _allowlist_covers(value):
        return None
    # No savepoint of its own inside the caller's transaction (the detectors'): nothing here
    # is caught and retried, an error fails the caller's transaction either way.
    with transaction.atomic(savepoint=False):
        # One locked read of the target's blocks that can still matter: the running one
        # (expires after now) and the repeat offences (expired within ESCALATION_MEMORY).
        if reads is not None:
            same = reads.same(key, now)
        else:
            same = list(
                Block.objects.select_for_update()
                .filter(kind=kind, value=value, username=username or "", expires_at__gte=now - ESCALATION_MEMORY)
                .order_by("-expires_at", "pk")
            )
        active = next((b for b in same if b.lifted_at is None and b.expires_at > now), None)
        if active is not None:
            _remember(key, active)
            return active
        level = max(b.escalation for b in same) + 1 if same else 0
        block = Block.objects.create(
            kind=kind,
            value=value,
            username=username or "",
            reason=reason[:255],
            rule=rule,
            alert=alert,
            created=now,
            expires_at=now + block_duration(level),
            escalation=level,
        )
        if reads is not None:
            reads.blocks[key].append(block)
    transaction.on_commit(lambda: _remember(key, block))
    return block


def _remember(key, block):
    if len(_recent) >= _RECENT_MAX:
        _recent.clear()
    _recent[key] = block


def _allowlist_covers(value: str) -> bool:
    """Does an allowlisted network overlap this address or prefix? (Read from the database: authoritative.)"""
    return _covered(value, _allowed_networks())


def _allowed_networks() -> list:
    """The allowlisted networks as ip_network objects, read from the database (entries that do not parse left out)."""
    from mailadmin.monitoring.models import AllowedNetwork

    networks = []
    for cidr in AllowedNetwork.objects.values_list("cidr", flat=True):
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue
    return networks


def _covered(value: str, networks) -> bool:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return any(allowed.version == net.version and allowed.overlaps(net) for allowed in networks)


def lift_block(block, *, by: str = "", now=None) -> None:
    block.lifted_at = now or timezone.now()
    block.lifted_by = by
    block.save(update_fields=["lifted_at", "lifted_by"])
