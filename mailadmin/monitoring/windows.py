"""Window totals: per-key sums over the whole grains of the overview's long preset ranges.

The overview ranks IPs, mailboxes, … over 24 h, 7 d and 30 d. Summing hour rows per key
costs ~700 k rows for 30 days of a busy server; WindowTotal keeps, per preset range, one
row per key with the sums over [first, cut) of a WindowState, in whole grains (GRAIN: quarter
hours for 24 h, hours for 7 d / 30 d). Charts add the rest of their exact range (the time
since `cut`, minus time the window still holds at its start) from the rollups or events, so
every number stays exactly what the events say (mailadmin.monitoring.charts).

Maintenance (PostgreSQL only; elsewhere the charts read the rollups):
- advance() — the beat task monitoring.advance_windows, every minute — adds the grains
  that ended FOLD_DELAY ago and subtracts the grains that left the range;
- ingest calls note_late() with each batch: events of a grain already folded in
  (replay, a batch delayed beyond FOLD_DELAY) are added to the windows right there, in
  ingest's transaction, with the derived rows (users tried, attacking IPs).
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import connection, transaction
from django.utils import timezone

from mailadmin.monitoring.models import FAILURE_RESULTS, Result, WindowState

log = logging.getLogger(__name__)

HOUR = dt.timedelta(hours=1)
QUARTER = dt.timedelta(minutes=15)
WINDOWS = ("24h", "7d", "30d")
# What a window folds in and out at a time. The 24 h range starts and ends at a quarter hour:
# folded by quarter hours, its spans are the quarter hours since the last fold (≤ 15 min +
# FOLD_DELAY + the current, incomplete quarter) and nothing at its start; by hours they were up
# to 30 minutes at the start plus the hour since the last fold. The quarter hours come from the
# minute rollups, whole hours from the hourly ones. 7 d / 30 d ranges start at an hour.
GRAIN = {"24h": QUARTER, "7d": HOUR, "30d": HOUR}
FINEST_GRAIN = min(GRAIN.values())
# A grain is folded in this long after it ended. Until then the charts read it as a span.
# Events arriving later are added by ingest (note_late).
FOLD_DELAY = dt.timedelta(minutes=3)
# Ingest checks batches with events this close to being foldable (longer than a batch's
# transaction lasts), so an advance() never folds a grain under an uncommitted batch.
LATE_MARGIN = dt.timedelta(minutes=1)
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


def _fold_sql(a: dt.datetime, b: dt.datetime) -> tuple[str, list]:
    """Rows (scope, dimension, key, sub, failures, attacks, total) of [a, b) and their params:
    the server-wide scope "" from the rollups (hourly for whole hours, minute rows for quarter
    hours), every domain from the events."""
    from mailadmin.monitoring.charts import global_rows

    rows, params = global_rows(GLOBAL_DIMENSIONS, a, b)
    per_domain = ", ".join(f"(false, '{dim}', {EVENT_KEYS[dim]}, '')" for dim in DOMAIN_DIMENSIONS)
    sql = f"""
    SELECT '' AS scope, dimension, key, '' AS sub, f, a, t
    FROM ({" UNION ALL ".join(rows)}) AS g (dimension, key, f, a, t)
    UNION ALL
    SELECT e.domain_name, d.dimension, d.key, d.sub,
        {sums_sql("e.result", "1")}
    FROM monitoring_authevent e
    CROSS JOIN LATERAL (VALUES (true, 'ipuser', host(e.client_ip), e.username), {per_domain})
        AS d (pair, dimension, key, sub)
    WHERE e.ts >= %s AND e.ts < %s AND (d.pair OR e.domain_name <> '')
    """  # noqa: S608 - only constants of this module are interpolated
    return sql, [*params, a, b]


def _fold(window: str, a: dt.datetime, b: dt.datetime, sign: int, *, whole=False) -> None:
    """Add (sign 1) or subtract (sign -1) the time [a, b) to a window's totals.

    whole: the window was empty before (a rebuild): the derived rows are counted over all
    its rows at once instead of for the IPs of these hours.
    """
    if a >= b:
        return
    rows, row_params = _fold_sql(a, b)
    sql = f"""
    INSERT INTO monitoring_windowtotal (preset, scope, dimension, key, sub, failures, attacks, total)
    SELECT %s, scope, dimension, key, sub, %s * sum(f), %s * sum(a), %s * sum(t)
    FROM ({rows}) AS x (scope, dimension, key, sub, f, a, t)
    GROUP BY scope, dimension, key, sub
    ORDER BY scope, dimension, key, sub
    ON CONFLICT (preset, scope, dimension, key, sub) DO UPDATE SET
        failures = monitoring_windowtotal.failures + EXCLUDED.failures,
        attacks = monitoring_windowtotal.attacks + EXCLUDED.attacks,
        total = monitoring_windowtotal.total + EXCLUDED.total
    """  # noqa: S608
    params = {"window": window, "a": a, "b": b}
    with connection.cursor() as cursor:
        cursor.execute(sql, [window, sign, sign, sign, *row_params])
        if sign < 0:
            cursor.execute("DELETE FROM monitoring_windowtotal WHERE preset = %s AND total <= 0", [window])
        # Derived rows: users tried per (domain, IP) for the IPs of these hours, attacking IPs per scope.
        # The IPs go through a temporary table with its own statistics: as a subquery, the planner
        # guessed its size and, over 7 days of events, picked a plan that ran for tens of minutes.
        if whole:
            touched = ""
        else:
            cursor.execute(
                "CREATE TEMPORARY TABLE IF NOT EXISTS mon_window_touched (key text PRIMARY KEY) ON COMMIT DROP"
            )
            cursor.execute("TRUNCATE mon_window_touched")
            cursor.execute(
                "INSERT INTO mon_window_touched SELECT DISTINCT host(client_ip) FROM monitoring_authevent "
                "WHERE ts >= %(a)s AND ts < %(b)s",
                params,
            )
            cursor.execute("ANALYZE mon_window_touched")
            touched = " AND key IN (SELECT key FROM mon_window_touched)"
        _derive(cursor, IP_USERS, "dimension = 'ipuser'", params, touched=touched, whole=whole)
        _derive(cursor, ATTACKERS, "dimension = 'ip' AND attacks > 0", params, whole=whole)


def _derive(cursor, derived: str, source: str, params: dict, *, touched: str | None = None, whole: bool) -> None:
    """Set a window's derived rows: per scope the number of `source` rows, per key of them
    (touched: the " AND key IN …" filter of the IPs to recount, or "" for all) or as one row
    (key "", touched None).

    Only counts that changed are written, and only rows whose count dropped to nothing are
    deleted: deleting and re-inserting every derived row of the touched IPs left ~50 k dead
    rows per quarter-hour fold at 10 M events (~10 M a day), bloating the table between vacuums.
    """
    per_key = touched is not None
    key, same_key, touched = ("key", " AND s.key = d.key", touched) if per_key else ("''", "", "")
    cursor.execute(
        f"""INSERT INTO monitoring_windowtotal (preset, scope, dimension, key, sub, failures, attacks, total)
        SELECT %(window)s, scope, '{derived}', {key}, '', 0, 0, count(*) FROM monitoring_windowtotal
        WHERE preset = %(window)s AND {source}{touched} GROUP BY scope, 4
        ON CONFLICT (preset, scope, dimension, key, sub) DO UPDATE SET total = EXCLUDED.total
        WHERE monitoring_windowtotal.total <> EXCLUDED.total""",  # noqa: S608 - constants of this module
        params,
    )
    if not whole:  # a rebuild started empty: nothing can have vanished
        cursor.execute(
            f"""DELETE FROM monitoring_windowtotal d WHERE preset = %(window)s AND dimension = '{derived}'{touched}
            AND NOT EXISTS (SELECT 1 FROM monitoring_windowtotal s
                WHERE s.preset = d.preset AND s.scope = d.scope AND {source}{same_key})""",  # noqa: S608 - constants
            params,
        )


def bounds(window: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The time [first, cut) a window should hold at `now`, in whole grains."""
    from mailadmin.monitoring.charts import floor_to, preset_range

    tr = preset_range(window, now)
    grain = GRAIN[window]
    # The grain boundary nearest the range's start (the range's start itself: every preset
    # range starts at a multiple of its window's grain).
    return floor_to(tr.start + grain / 2, grain), floor_to(now - FOLD_DELAY, grain)


def rebuild(window: str, first: dt.datetime, cut: dt.datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM monitoring_windowtotal WHERE preset = %s", [window])
        cursor.execute("SET LOCAL work_mem = '256MB'")  # one large aggregation, in memory
    _fold(window, first, cut, 1, whole=True)


def advance(now: dt.datetime | None = None) -> dict:
    """Bring every window to the grains it should hold now (the beat task)."""
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

    Events of grains a window has already folded in (replay, a batch delayed past
    FOLD_DELAY) are added to that window here, with its derived rows, so the window
    stays exact without a rebuild. Live batches carry only events of the current quarter
    hour (or the previous one within FOLD_DELAY): for them this is one comparison.
    """
    if not rows or connection.vendor != "postgresql":
        return
    from mailadmin.monitoring.charts import floor_to

    oldest = min(row["ts"] for row in rows)
    now = now or timezone.now()
    if oldest >= floor_to(now - FOLD_DELAY + LATE_MARGIN, FINEST_GRAIN):
        return
    # Lock first (every row, in one order): an advance() in progress finishes before we
    # look, and one that starts after us waits for our commit and then sees our events.
    states = list(WindowState.objects.select_for_update().order_by("preset"))
    for state in states:
        late = [row for row in rows if state.first <= row["ts"] < state.cut]
        if late and not state.stale:
            _add_rows(state.preset, late)
            WindowState.objects.filter(preset=state.preset).update(version=state.version + 1)


def _contributions(rows: list[dict]) -> dict:
    """(scope, dimension, key, sub) → [failures, attacks, total] of these events, keyed as
    the fold keys them (hourly rollups for the "" scope, events for domains)."""
    from mailadmin.monitoring.hourly import listener_key

    out: dict = {}
    for row in rows:
        n = (int(row["result"] != Result.SUCCESS), int(row["result"] in FAILURE_RESULTS), 1)
        ip, domain, listener = row["client_ip"], row["domain_name"], listener_key(row.get("listener"), row.get("tls"))
        keys = [("", "ip", ip, ""), ("", "listener", listener, ""), (domain, "ipuser", ip, row["username"])]
        keys += [("", dim, row[dim], "") for dim in ("username", "mechanism", "country") if row[dim]]
        if domain:
            keys += [(domain, "ip", ip, ""), (domain, "listener", listener, ""), (domain, "result", row["result"], "")]
            keys += [(domain, dim, row[dim] or "", "") for dim in ("username", "mechanism", "country")]
        for key in keys:
            sums = out.setdefault(key, [0, 0, 0])
            for i in range(3):
                sums[i] += n[i]
    return out


def _upsert(window: str, items: list[tuple]) -> list[tuple]:
    """Add (scope, dimension, key, sub, failures, attacks, total) rows; returns the new values."""
    if not items:
        return []
    items = sorted(items)  # one lock order for concurrent batches
    columns = list(zip(*items, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO monitoring_windowtotal (preset, scope, dimension, key, sub, failures, attacks, total)
            SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],
                %s::bigint[])
            ON CONFLICT (preset, scope, dimension, key, sub) DO UPDATE SET
                failures = monitoring_windowtotal.failures + EXCLUDED.failures,
                attacks = monitoring_windowtotal.attacks + EXCLUDED.attacks,
                total = monitoring_windowtotal.total + EXCLUDED.total
            RETURNING scope, dimension, key, sub, attacks, total""",
            [window, *[list(c) for c in columns]],
        )
        return cursor.fetchall()


def _add_rows(window: str, rows: list[dict]) -> None:
    added = _contributions(rows)
    after = _upsert(window, [(*key, *sums) for key, sums in added.items()])
    derived: dict = {}
    for scope, dimension, key, sub, attacks, total in after:
        _f, a, t = added[(scope, dimension, key, sub)]
        if dimension == "ip" and attacks - a <= 0 < attacks:  # an IP that starts attacking
            derived[(scope, ATTACKERS, "", "")] = derived.get((scope, ATTACKERS, "", ""), 0) + 1
        if dimension == "ipuser" and total - t <= 0 < total:  # a user this IP had not tried
            derived[(scope, IP_USERS, key, "")] = derived.get((scope, IP_USERS, key, ""), 0) + 1
    _upsert(window, [(*key, 0, 0, n) for key, n in derived.items()])
