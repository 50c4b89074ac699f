"""Window totals: per-key sums over the whole hours of the overview's long preset ranges.

The overview ranks IPs, mailboxes, … over 24 h, 7 d and 30 d. Summing hour rows per key
costs ~700 k rows for 30 days of a busy server; WindowTotal keeps, per preset range, one
row per key with the sums over the hours [first, cut) of a WindowState. Charts add the
rest of their exact range (the partial hours at the ends, the hours since `cut`, minus
hours the window still holds at its start) from the rollups or events, so every number
stays exactly what the events say (mailadmin.monitoring.charts).

Maintenance (PostgreSQL only; elsewhere the charts read the rollups):
- advance() — the beat task monitoring.advance_windows, every minute — adds the hours
  that ended FOLD_DELAY ago and subtracts the hours that left the range;
- ingest calls note_late() with each batch: events of an hour already folded in
  (replay, a batch delayed beyond FOLD_DELAY) mark the window stale, so readers stop
  using it until the next advance() rebuilds it from the rollups and events.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import connection, transaction
from django.utils import timezone

from mailadmin.monitoring.models import FAILURE_RESULTS, Result, WindowState

log = logging.getLogger(__name__)

HOUR = dt.timedelta(hours=1)
WINDOWS = ("24h", "7d", "30d")
FOLD_DELAY = dt.timedelta(minutes=10)  # an hour is folded in this long after it ended
# Ingest checks batches with events this close to being foldable (longer than a batch's
# transaction lasts), so an advance() never folds an hour under an uncommitted batch.
LATE_MARGIN = dt.timedelta(minutes=5)
MAX_STEP = dt.timedelta(hours=48)  # a window further behind than this is rebuilt

# Key expressions over monitoring_authevent, per dimension (the rollups' keys).
EVENT_KEYS = {
    "ip": "host(e.client_ip)",
    "username": "e.username",
    "mechanism": "e.mechanism",
    "country": "e.country",
    "listener": "coalesce(e.listener::text, '') || '|' || e.tls",
    "result": "e.result",
}
# Dimensions kept for every domain (from events); the server-wide scope "" keeps
# GLOBAL_DIMENSIONS (from the hourly rollups). "ipuser" pairs are kept once, under the user's domain.
DOMAIN_DIMENSIONS = ("ip", "username", "mechanism", "country", "listener", "result")
GLOBAL_DIMENSIONS = ("ip", "username", "mechanism", "country", "listener")  # hourly rollup dimensions
# Derived rows kept with them: per (scope, IP) the number of users tried (its "ipuser" rows),
# per scope the number of IPs with attacks (key ""), both in `total`.
IP_USERS = "ipusers"
ATTACKERS = "attackers"


def sums_sql(result: str, n: str) -> str:
    """failures, attacks, total of `n` attempts with result `result` (SQL expressions)."""
    attacks = ", ".join(f"'{r}'" for r in FAILURE_RESULTS)  # constants of the code, not input
    return (
        f"CASE WHEN {result} <> '{Result.SUCCESS}' THEN {n} ELSE 0 END, "
        f"CASE WHEN {result} IN ({attacks}) THEN {n} ELSE 0 END, {n}"
    )


def _fold_sql() -> str:
    """Rows (scope, dimension, key, sub, failures, attacks, total) of the hours [%(a)s, %(b)s)."""
    per_domain = ", ".join(f"(false, '{dim}', {EVENT_KEYS[dim]}, '')" for dim in DOMAIN_DIMENSIONS)
    return f"""
    SELECT '' AS scope, dimension, key, '' AS sub, {sums_sql("result", "count")}
    FROM monitoring_hourlyrollup
    WHERE dimension IN ({", ".join(f"'{d}'" for d in GLOBAL_DIMENSIONS)}) AND hour >= %(a)s AND hour < %(b)s
    UNION ALL
    SELECT e.domain_name, d.dimension, d.key, d.sub,
        {sums_sql("e.result", "1")}
    FROM monitoring_authevent e
    CROSS JOIN LATERAL (VALUES (true, 'ipuser', host(e.client_ip), e.username), {per_domain})
        AS d (pair, dimension, key, sub)
    WHERE e.ts >= %(a)s AND e.ts < %(b)s AND (d.pair OR e.domain_name <> '')
    """  # noqa: S608 - only constants of this module are interpolated


def _fold(window: str, a: dt.datetime, b: dt.datetime, sign: int) -> None:
    """Add (sign 1) or subtract (sign -1) the hours [a, b) to a window's totals."""
    if a >= b:
        return
    sql = f"""
    INSERT INTO monitoring_windowtotal (preset, scope, dimension, key, sub, failures, attacks, total)
    SELECT %(window)s, scope, dimension, key, sub, %(sign)s * sum(f), %(sign)s * sum(a), %(sign)s * sum(t)
    FROM ({_fold_sql()}) AS x (scope, dimension, key, sub, f, a, t)
    GROUP BY scope, dimension, key, sub
    ORDER BY scope, dimension, key, sub
    ON CONFLICT (preset, scope, dimension, key, sub) DO UPDATE SET
        failures = monitoring_windowtotal.failures + EXCLUDED.failures,
        attacks = monitoring_windowtotal.attacks + EXCLUDED.attacks,
        total = monitoring_windowtotal.total + EXCLUDED.total
    """  # noqa: S608
    params = {"window": window, "a": a, "b": b, "sign": sign}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if sign < 0:
            cursor.execute("DELETE FROM monitoring_windowtotal WHERE preset = %s AND total <= 0", [window])
        # Derived rows: users tried per (domain, IP) for the IPs of these hours, attacking IPs per scope.
        touched = "SELECT DISTINCT host(client_ip) FROM monitoring_authevent WHERE ts >= %(a)s AND ts < %(b)s"
        cursor.execute(
            f"DELETE FROM monitoring_windowtotal WHERE preset = %(window)s AND dimension = '{IP_USERS}' "  # noqa: S608
            f"AND key IN ({touched})",
            params,
        )
        cursor.execute(
            f"""INSERT INTO monitoring_windowtotal (preset, scope, dimension, key, sub, failures, attacks, total)
            SELECT %(window)s, scope, '{IP_USERS}', key, '', 0, 0, count(*) FROM monitoring_windowtotal
            WHERE preset = %(window)s AND dimension = 'ipuser' AND key IN ({touched}) GROUP BY scope, key""",  # noqa: S608
            params,
        )
        cursor.execute(
            f"DELETE FROM monitoring_windowtotal WHERE preset = %(window)s AND dimension = '{ATTACKERS}'",  # noqa: S608
            params,
        )
        cursor.execute(
            f"""INSERT INTO monitoring_windowtotal (preset, scope, dimension, key, sub, failures, attacks, total)
            SELECT %(window)s, scope, '{ATTACKERS}', '', '', 0, 0, count(*) FROM monitoring_windowtotal
            WHERE preset = %(window)s AND dimension = 'ip' AND attacks > 0 GROUP BY scope""",  # noqa: S608
            params,
        )


def bounds(window: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The hours [first, cut) a window should hold at `now`."""
    from mailadmin.monitoring.charts import ceil_to, floor_to, preset_range

    tr = preset_range(window, now)
    return ceil_to(tr.start, HOUR), floor_to(now - FOLD_DELAY, HOUR)


def rebuild(window: str, first: dt.datetime, cut: dt.datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM monitoring_windowtotal WHERE preset = %s", [window])
    _fold(window, first, cut, 1)


def advance(now: dt.datetime | None = None) -> dict:
    """Bring every window to the hours it should hold now (the beat task)."""
    if connection.vendor != "postgresql":
        return {}
    now = now or timezone.now()
    done = {}
    for window in WINDOWS:
        first, cut = bounds(window, now)
        with transaction.atomic():
            WindowState.objects.get_or_create(
                preset=window, defaults={"first": first, "cut": first, "stale": True, "updated": now}
            )
            state = WindowState.objects.select_for_update().get(preset=window)
            if (state.first, state.cut) == (first, cut) and not state.stale:
                done[window] = "current"
                continue
            step = max(abs(first - state.first), abs(cut - state.cut))
            if state.stale or first < state.first or cut < state.cut or first >= state.cut or step > MAX_STEP:
                rebuild(window, first, cut)
                done[window] = "rebuilt"
            else:
                _fold(window, state.cut, cut, 1)
                _fold(window, state.first, first, -1)
                done[window] = "advanced"
            WindowState.objects.filter(preset=window).update(
                first=first, cut=cut, stale=False, version=state.version + 1, updated=now
            )
    if any(v == "rebuilt" for v in done.values()):
        log.info("window totals: %s", done)
    return done


def note_late(rows: list[dict], now: dt.datetime | None = None) -> None:
    """Called by ingest, in its transaction, with the events it just inserted.

    Events of hours a window has already folded in make that window stale (readers fall
    back to the rollups; the next advance() rebuilds it). Live batches carry only events
    of the current hour (or the previous one within FOLD_DELAY), so this costs nothing.
    """
    if not rows or connection.vendor != "postgresql":
        return
    oldest = min(row["ts"] for row in rows)
    now = now or timezone.now()
    if oldest >= (now - FOLD_DELAY + LATE_MARGIN).replace(minute=0, second=0, microsecond=0):
        return
    newest = max(row["ts"] for row in rows)
    # Lock first (every row, in one order): an advance() in progress finishes before we
    # look, and one that starts after us waits for our commit and then sees our events.
    locked = list(WindowState.objects.select_for_update().order_by("preset").values_list("preset", flat=True))
    if locked:
        from django.db.models import F

        WindowState.objects.filter(first__lte=newest, cut__gt=oldest).update(stale=True, version=F("version") + 1)
