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


def hourly_counts(rows: list[dict], minute_counts: Counter | None = None) -> Counter:
    """The minute rollups' counts summed per hour, plus the listener dimension."""
    if minute_counts is None:
        from mailadmin.monitoring.ingest import rollup_counts  # the minute rollups' own definition

        minute_counts = rollup_counts(rows)
    counts = Counter()
    for (dimension, key, minute, result, domain_name), n in minute_counts.items():
        counts[(dimension, key, minute.replace(minute=0), result, domain_name)] += n
    for row in rows:
        hour = row["ts"].replace(minute=0, second=0, microsecond=0)
        key = listener_key(row.get("listener"), row.get("tls"))
        counts[(HourlyRollup.LISTENER, key, hour, row["result"], "")] += 1
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
