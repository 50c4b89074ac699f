"""Hourly rollups: what ingest adds to HourlyRollup next to the minute rollups.

Called by ingest with the rows it just inserted (only new events, so a
redelivered batch adds nothing), inside the same transaction as the minute
rollups: the hourly counts are always the sums of the minute counts (plus the
"listener" and "domain" dimensions, which have no minute counterpart: "domain" keys by
the username's domain, what a domain admin's long-range timeline reads).
"""

from __future__ import annotations

from collections import Counter

from django.db import connection

from mailadmin.monitoring.models import HourlyRollup


def listener_key(listener, tls) -> str:
    """ "587|TLSv1.3"; the web listener (no port) is "|…"."""
    return f"{'' if listener is None else listener}|{tls or ''}"


def parse_listener_key(key: str) -> tuple[int | None, str]:
    port, _, tls = key.partition("|")
    return (int(port) if port else None), tls


def hourly_counts(rows: list[dict]) -> Counter:
    from mailadmin.monitoring.ingest import rollup_counts  # the minute rollups' own definition

    counts = Counter()
    for (dimension, key, minute, result, domain_name), n in rollup_counts(rows).items():
        counts[(dimension, key, minute.replace(minute=0), result, domain_name)] += n
    for row in rows:
        hour = row["ts"].replace(minute=0, second=0, microsecond=0)
        key = listener_key(row.get("listener"), row.get("tls"))
        counts[(HourlyRollup.LISTENER, key, hour, row["result"], "")] += 1
        if row["domain_name"]:
            domain = row["domain_name"]
            counts[(HourlyRollup.DOMAIN, domain, hour, row["result"], domain)] += 1
    return counts


def upsert_hourly_rollups(rows: list[dict]) -> None:
    """Add these (new) events to the hourly rollups: one upsert statement, like the minute ones."""
    counts = hourly_counts(rows)
    if not counts:
        return
    table = connection.ops.quote_name(HourlyRollup._meta.db_table)
    hour_field = HourlyRollup._meta.get_field("hour")
    # Sorted so concurrent workers lock rows in the same order (no deadlocks).
    items = sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3]))
    columns = "(hour, dimension, key, result, count, domain_name)"
    conflict = f" ON CONFLICT (dimension, key, hour, result) DO UPDATE SET count = {table}.count + EXCLUDED.count"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            arrays = [[], [], [], [], [], []]
            for (dimension, key, hour, result, domain_name), count in items:
                for column, value in zip(arrays, (hour, dimension, key, result, count, domain_name), strict=True):
                    column.append(value)
            cursor.execute(
                f"INSERT INTO {table} {columns} "  # noqa: S608 - identifiers from model metadata
                "SELECT * FROM unnest(%s::timestamptz[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[])"
                + conflict,
                arrays,
            )
            return
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            params = []
            for (dimension, key, hour, result, domain_name), count in chunk:
                params += [hour_field.get_db_prep_save(hour, connection), dimension, key, result, count, domain_name]
            values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
            cursor.execute(f"INSERT INTO {table} {columns} VALUES {values}" + conflict, params)  # noqa: S608


def rebuild_sql() -> str:
    """PostgreSQL: (re)build HourlyRollup from the minute rollups and events (backfill, benchmark)."""
    return """
    INSERT INTO monitoring_hourlyrollup (hour, dimension, key, result, count, domain_name)
    SELECT date_trunc('hour', minute), dimension, key, result, sum(count), max(domain_name)
    FROM monitoring_rollup GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT date_trunc('hour', ts), 'listener', coalesce(listener::text, '') || '|' || tls, result, count(*), ''
    FROM monitoring_authevent GROUP BY 1, 3, 4
    UNION ALL
    SELECT date_trunc('hour', ts), 'domain', domain_name, result, count(*), domain_name
    FROM monitoring_authevent WHERE domain_name <> '' GROUP BY 1, 3, 4
    """
