"""Hourly rollups: what ingest adds to HourlyRollup next to the minute rollups.

Called by ingest with the rows it just inserted (only new events, so a
redelivered batch adds nothing), inside the same transaction as the minute
rollups: the hourly counts are always the sums of the minute counts (plus the
"listener" dimension, which has no minute counterpart). Both tables have the "domain"
dimension (key = the username's domain), what a domain admin's timelines read.
"""

from __future__ import annotations

from collections import Counter

from mailadmin.monitoring.models import HourlyRollup


def listener_key(listener, tls) -> str:
    """ "587|TLSv1.3"; the web listener (no port) is "|…"."""
    return f"{'' if listener is None else listener}|{tls or ''}"


def parse_listener_key(key: str) -> tuple[int | None, str]:
    port, _, tls = key.partition("|")
    return (int(port) if port else None), tls


# Hourly dimensions without a minute counterpart: (dimension, event row field, scoped), as
# ingest.ROLLUP_DIMENSIONS. "listener_key" is written by ingest for every row.
EXTRA_DIMENSIONS = (
    (HourlyRollup.LISTENER, "listener_key", False),
    (HourlyRollup.DOMAIN, "domain_name", True),
)


def extra_dimensions(minute_dimensions) -> tuple:
    """The hourly dimensions the minute rollups do not have already (they are summed from those)."""
    have = {dimension for dimension, _name, _scoped in minute_dimensions}
    return tuple(d for d in EXTRA_DIMENSIONS if d[0] not in have)


def hourly_counts(rows: list[dict], minute_counts: Counter | None = None) -> Counter:
    """The minute rollups' counts summed per hour, plus the dimensions only hours have."""
    from mailadmin.monitoring.ingest import ROLLUP_DIMENSIONS, rollup_counts  # the minute rollups' definition

    if minute_counts is None:
        minute_counts = rollup_counts(rows)
    counts = Counter()
    for (dimension, key, minute, result, domain_name), n in minute_counts.items():
        counts[(dimension, key, minute.replace(minute=0), result, domain_name)] += n
    extra = extra_dimensions(ROLLUP_DIMENSIONS)
    for row in rows:
        hour = row["ts"].replace(minute=0, second=0, microsecond=0)
        for dimension, name, scoped in extra:
            key = listener_key(row.get("listener"), row.get("tls")) if name == "listener_key" else row[name]
            if key:
                counts[(dimension, key, hour, row["result"], row["domain_name"] if scoped else "")] += 1
    return counts


def upsert_hourly_rollups(rows: list[dict], minute_counts: Counter | None = None) -> None:
    """Add these (new) events to the hourly rollups: one upsert statement, like the minute ones.

    minute_counts: the batch's minute rollup counts when the caller has them already.
    """
    from mailadmin.monitoring.ingest import upsert_counts

    upsert_counts(HourlyRollup, "hour", hourly_counts(rows, minute_counts))


def rebuild_sql() -> str:
    """PostgreSQL: (re)build HourlyRollup from the minute rollups and events (backfill, benchmark)."""
    return """
    INSERT INTO monitoring_hourlyrollup (hour, dimension, key, result, count, domain_name)
    SELECT date_trunc('hour', minute), dimension, key, result, sum(count), max(domain_name)
    FROM monitoring_rollup GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT date_trunc('hour', ts), 'listener', coalesce(listener::text, '') || '|' || tls, result, count(*), ''
    FROM monitoring_authevent GROUP BY 1, 3, 4
    ORDER BY 2, 1
    """
