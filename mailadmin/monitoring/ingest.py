"""Ingest of auth-event batches: validate, enrich, insert once, roll up, detect.

Idempotent: the event id is unique and the insert returns only the rows that
were new, so rollups and detectors see each event exactly once however often
a batch is redelivered. A bad event is counted and logged (never with its
credential fields) and the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from mailadmin.monitoring import enrich, hourly, windows
from mailadmin.monitoring.blocks import prefix_of
from mailadmin.monitoring.hourly import listener_key
from mailadmin.monitoring.models import AuthEvent, Result, Rollup, domain_of

log = logging.getLogger(__name__)

# Accept clocks up to this far ahead of ours; later timestamps are clamped (live mode only).
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
INSERT_CHUNK = 500
RESULTS = {r.value for r in Result}
KNOWN_FIELDS = {
    "id",
    "ts",
    "node",
    "session_id",
    "attempt",
    "client_ip",
    "listener",
    "tls",
    "helo",
    "mechanism",
    "username",
    "credential",
    "result",
    "pw_fp",
    "latency_ms",
}


class InvalidEvent(ValueError):
    pass


@dataclass
class IngestReport:
    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    invalid: int = 0
    invalid_reasons: Counter = field(default_factory=Counter)
    alerts: int = 0

    def as_dict(self):
        return {
            "received": self.received,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
            "alerts": self.alerts,
        }


def parse_ts(value) -> dt.datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(float(value), tz=dt.UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEvent("ts is not ISO 8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)  # the contract's timestamps are UTC
        return parsed.astimezone(dt.UTC)
    raise InvalidEvent("ts missing or not a timestamp")


def _text(raw, name, limit, *, lower=False) -> str:
    value = raw.get(name)
    if value is None:
        return ""
    if not isinstance(value, str | int):
        raise InvalidEvent(f"{name} is not a string")
    value = str(value).strip()
    return (value.lower() if lower else value)[:limit]


WEB_LISTENER = "web"


def _int(raw, name, *, minimum=0, maximum=None, default=None):
    value = raw.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise InvalidEvent(f"{name} is not an integer")
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise InvalidEvent(f"{name} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise InvalidEvent(f"{name} out of range")
    return value


ADDRESS_MEMO_MAX = 100_000
_address_memo: dict = {}


def prefix_lengths() -> tuple[int, int]:
    """The configured (IPv4, IPv6) prefix lengths: part of the address memo's key."""
    return getattr(settings, "MONITORING_PREFIX_V4", 24), getattr(settings, "MONITORING_PREFIX_V6", 64)


def _address(text: str, lengths: tuple[int, int] | None = None) -> tuple[str, str]:
    """(normalised address, its prefix) of a client_ip; raises ValueError.

    Memoised (per configured prefix lengths): the same addresses come back all day, and
    parsing one twice costs more than the rest of validate(). `lengths`: prefix_lengths(),
    read once per batch by the caller (two reads of the lazy settings object per event cost
    more than the memo lookup itself).
    """
    key = (text, *(lengths or prefix_lengths()))
    found = _address_memo.get(key)
    if found is None:
        ip = str(ipaddress.ip_address(text))
        if ip.startswith("::ffff:"):
            ip = str(ipaddress.ip_address(ip).ipv4_mapped)
        found = (ip, prefix_of(ip))
        if len(_address_memo) >= ADDRESS_MEMO_MAX:
            _address_memo.clear()
        _address_memo[key] = found
    return found


def validate(raw, *, now: dt.datetime | None = None, lengths: tuple[int, int] | None = None) -> dict:
    """One contract event → the clean fields of an AuthEvent row (raises InvalidEvent).

    lengths: prefix_lengths(), when the caller validates many events at once."""
    if not isinstance(raw, dict):
        raise InvalidEvent("event is not an object")
    try:
        event_id = uuid.UUID(str(raw.get("id")))
    except (TypeError, ValueError):
        raise InvalidEvent("id is not a UUID") from None
    ts = parse_ts(raw.get("ts"))
    if now is not None and ts > now + MAX_CLOCK_SKEW:
        log.warning("auth event %s: ts %s is ahead of our clock; using the time received", event_id, ts.isoformat())
        ts = now
    try:
        ip, prefix = _address(str(raw.get("client_ip", "")).strip(), lengths)
    except ValueError:
        raise InvalidEvent("client_ip is not an IP address") from None
    result = raw.get("result")
    if result not in RESULTS:
        raise InvalidEvent("result is not one of the contract's values")
    tls = raw.get("tls")
    if isinstance(tls, dict):
        tls = " ".join(str(v) for v in tls.values() if v)
    username = _text(raw, "username", 320, lower=True)
    return {
        "event_id": event_id,
        "ts": ts,
        "node": _text(raw, "node", 100),
        "session_id": _text(raw, "session_id", 64),
        "attempt": _int(raw, "attempt", minimum=0, default=1),
        "client_ip": ip,
        "prefix": prefix,
        # Owner-portal sign-ins come from the web, not an SMTP port: stored without a port.
        "listener": None if raw.get("listener") == WEB_LISTENER else _int(raw, "listener", minimum=0, maximum=65535),
        "tls": str(tls or "")[:100],
        "helo": _text(raw, "helo", 255),
        "mechanism": _text(raw, "mechanism", 20).upper(),
        "username": username,
        "domain_name": domain_of(username),
        "credential": _text(raw, "credential", 64),
        "result": result,
        "pw_fp": _int(raw, "pw_fp", minimum=0, maximum=0xFFF),  # 12 bits (DESIGN)
        "latency_ms": _int(raw, "latency_ms", minimum=0, maximum=2**31 - 1),
    }


def _enrich(row: dict, cache: dict) -> None:
    ip = row["client_ip"]
    place = cache.get(ip)
    if place is None:
        place = cache[ip] = enrich.lookup(ip)
    row.update(
        country=place.country,
        city=place.city[:100],
        latitude=place.latitude,
        longitude=place.longitude,
        asn=place.asn,
        as_name=place.as_name[:200],
        network_name=place.network_name[:200],
        network_kind=place.network_kind,
    )
    row["asn_key"] = place.asn_key


_COLUMNS = None


def _columns():
    global _COLUMNS
    if _COLUMNS is None:
        _COLUMNS = [f for f in AuthEvent._meta.concrete_fields if not f.primary_key]
    return _COLUMNS


def bound_cursor():
    """A PostgreSQL cursor that sends parameters apart from the SQL (server-side binding).

    Django's default psycopg cursor binds on the client: every element of the big
    unnest arrays would be quoted into the SQL text in Python and parsed back by the
    server. This one lets psycopg's C dumpers send them as typed arrays. Still a
    Django cursor wrapper (execute_wrapper, error translation, debug logging).
    """
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    with connection.wrap_database_errors:
        return connection._prepare_cursor(ServerBindingCursor(connection.connection))


def insert_new(rows: list[dict]) -> set[uuid.UUID]:
    """INSERT … ON CONFLICT DO NOTHING RETURNING: the ids that were not there before (not
    PostgreSQL: there _insert_and_roll_up does it with COPY)."""
    fields = _columns()
    table = connection.ops.quote_name(AuthEvent._meta.db_table)
    cols = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    new_ids = set()
    with connection.cursor() as cursor:
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = rows[start : start + INSERT_CHUNK]
            params = []
            for row in chunk:
                for f in fields:
                    params.append(f.get_db_prep_save(row.get(f.attname, f.get_default()), connection))
            # Identifiers come from model metadata; every value is a parameter.
            values = ", ".join([one] * len(chunk))
            sql = f"INSERT INTO {table} ({cols}) VALUES {values} ON CONFLICT (event_id) DO NOTHING RETURNING event_id"  # noqa: S608
            cursor.execute(sql, params)
            for (value,) in cursor.fetchall():
                new_ids.add(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    return new_ids


def known_event_ids(ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these event ids are stored already (one array parameter on PostgreSQL)."""
    if connection.vendor != "postgresql":
        return set(AuthEvent.objects.filter(event_id__in=ids).values_list("event_id", flat=True))
    table = connection.ops.quote_name(AuthEvent._meta.db_table)
    with bound_cursor() as cursor:
        cursor.execute(f"SELECT event_id FROM {table} WHERE event_id = ANY(%b::uuid[])", [ids])  # noqa: S608
        return {value for (value,) in cursor.fetchall()}


# The minute rollups' dimensions: (dimension, the event row's field that keys it, whether its rows
# carry the username's domain for scoping). Everything is generated from this list: the Python
# counts (rollup_counts, SQLite), the PostgreSQL statement (_insert_and_roll_up) and the hourly
# rollups (which add hourly.EXTRA_DIMENSIONS). Adding a dimension is one line here.
ROLLUP_DIMENSIONS = (
    ("all", None, False),  # key "": server-wide totals
    ("ip", "client_ip", False),
    ("prefix", "prefix", False),
    ("username", "username", True),
    ("domain", "domain_name", True),  # a domain admin's timelines
    ("country", "country", False),
    ("asn", "asn_key", False),
    ("mechanism", "mechanism", False),
)
ROLLUP_KEY_MAX = 320  # Rollup.key's max_length


def rollup_counts(rows: list[dict]) -> Counter:
    """{(dimension, key, minute, result, domain_name): n} of these events (empty keys are not counted)."""
    counts = Counter()
    for row in rows:
        minute = row["ts"].replace(second=0, microsecond=0)
        result = row["result"]
        for dimension, name, scoped in ROLLUP_DIMENSIONS:
            key = row[name][:ROLLUP_KEY_MAX] if name else ""
            if key or name is None:
                counts[(dimension, key, minute, result, row["domain_name"] if scoped else "")] += 1
    return counts


def upsert_counts(model, time_column: str, counts: Counter) -> None:
    """Add {(dimension, key, time, result, domain_name): n} to a rollup table (not PostgreSQL:
    there _insert_and_roll_up counts and upserts in SQL).

    Rows are locked in sorted key order, so concurrent workers never deadlock.
    """
    if not counts:
        return
    table = connection.ops.quote_name(model._meta.db_table)
    time_field = model._meta.get_field(time_column)
    items = sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3]))
    columns = f"({time_column}, dimension, key, result, count, domain_name)"
    conflict = (
        f" ON CONFLICT (dimension, key, {time_column}, result) DO UPDATE SET count = {table}.count + EXCLUDED.count"
    )
    with connection.cursor() as cursor:
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            params = []
            for (dimension, key, when, result, domain_name), count in chunk:
                params += [time_field.get_db_prep_save(when, connection), dimension, key, result, count, domain_name]
            values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(chunk))
            # Identifiers come from model metadata; every value is a parameter.
            cursor.execute(f"INSERT INTO {table} {columns} VALUES {values}" + conflict, params)  # noqa: S608


def upsert_rollups(counts: Counter) -> None:
    upsert_counts(Rollup, "minute", counts)


def insert_and_roll_up(rows: list[dict]) -> set[uuid.UUID]:
    """Insert the events that are not stored yet and add exactly those to the minute and hourly
    rollups (a redelivered event adds nothing). Returns the ids inserted."""
    if connection.vendor == "postgresql":
        return _insert_and_roll_up(rows)
    new_ids = insert_new(rows)
    new_rows = [r for r in rows if r["event_id"] in new_ids]
    minute_counts = rollup_counts(new_rows)
    upsert_rollups(minute_counts)
    hourly.upsert_hourly_rollups(new_rows, minute_counts)
    return new_ids


BATCH_TABLE = "mon_ingest_batch"  # a temporary table: this session's batch on its way in
_BATCH_EXTRA = ("ip_key", "asn_key", "listener_key")  # text keys of the rollups, as Python writes them


_KEY_SOURCES = {"client_ip": "ip_key"}  # the address as Python normalised it (host() may differ)


def _keyed(dimensions) -> str:
    """FROM new n, one row per (event, dimension) with its key: the rollups' fan-out."""
    values = ", ".join(
        f"('{dimension}', {'n.' + _KEY_SOURCES.get(name, name) if name else chr(39) * 2}, "
        f"{'n.domain_name' if scoped else chr(39) * 2})"
        for dimension, name, scoped in dimensions
    )
    return (
        f"FROM new n CROSS JOIN LATERAL (VALUES {values}) AS d (dimension, key, domain_name) "
        "WHERE d.key <> '' OR d.dimension = 'all'"
    )


def _upsert_sql(model, time_column: str, select: str) -> str:
    """INSERT of (time, dimension, key, result, count, domain_name) rows into a rollup table:
    rows locked in key order (concurrent workers never deadlock), counts added on conflict."""
    table = connection.ops.quote_name(model._meta.db_table)
    return (
        f"INSERT INTO {table} ({time_column}, dimension, key, result, count, domain_name) {select} "  # noqa: S608
        f"ORDER BY 2, 3, 1, 4 ON CONFLICT (dimension, key, {time_column}, result) "
        f"DO UPDATE SET count = {table}.count + EXCLUDED.count"
    )


_STATEMENTS: dict = {}


def _statements() -> tuple[str, str, str]:
    """(CREATE of the batch table, its COPY, the one statement that inserts and rolls up)."""
    if not _STATEMENTS:
        from mailadmin.monitoring.models import HourlyRollup

        fields = _columns()
        names = [f.column for f in fields]
        cols = ", ".join(connection.ops.quote_name(n) for n in names)
        table = connection.ops.quote_name(AuthEvent._meta.db_table)
        extra = ", ".join(f"''::text AS {n}" for n in _BATCH_EXTRA)
        hourly_extra = hourly.extra_dimensions(ROLLUP_DIMENSIONS)
        # Only the columns the rollups read travel past the INSERT (not whole event rows).
        used = {"ts", "result", "domain_name"}
        used |= {_KEY_SOURCES.get(name, name) for _d, name, _s in (*ROLLUP_DIMENSIONS, *hourly_extra) if name}
        new_cols = ", ".join(f"batch.{n}" for n in sorted(used))
        # ON COMMIT DELETE ROWS: the table is emptied by truncation at commit. A DELETE alone
        # left every batch's rows behind as dead tuples (nothing vacuums a temporary table), so
        # the DELETE below scanned all the batches the session had ever ingested: a long-lived
        # worker's insert grew slower batch after batch.
        _STATEMENTS["create"] = (
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {BATCH_TABLE} ON COMMIT DELETE ROWS AS "  # noqa: S608
            f"SELECT {cols}, {extra} FROM {table} WITH NO DATA"
        )
        _STATEMENTS["copy"] = f"COPY pg_temp.{BATCH_TABLE} ({cols}, {', '.join(_BATCH_EXTRA)}) FROM STDIN"
        # The batch table is emptied by the statement that reads it (DELETE … RETURNING), so a
        # batch never sees another's rows, inside an outer transaction or not; only the events
        # the INSERT returns (the new ones) reach the rollups. The new events are counted once
        # per minute and dimension ("counted"); the hourly rows are the sums of those counts
        # plus the hourly-only dimensions.
        trunc = f"left(d.key, {ROLLUP_KEY_MAX})"
        per_hour = "SELECT date_trunc('hour', t) AS h, dimension, key, result, events, domain_name FROM counted"
        if hourly_extra:
            per_hour += (
                f" UNION ALL SELECT date_trunc('hour', n.ts), d.dimension, {trunc}, n.result, 1, d.domain_name "
                + _keyed(hourly_extra)
            )
        _STATEMENTS["insert"] = (
            f"WITH batch AS (DELETE FROM pg_temp.{BATCH_TABLE} RETURNING *), "  # noqa: S608
            f"ins AS (INSERT INTO {table} ({cols}) SELECT {cols} FROM batch "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id), "
            f"new AS (SELECT {new_cols} FROM batch JOIN ins USING (event_id)), "
            f"counted AS (SELECT date_trunc('minute', n.ts) AS t, d.dimension, {trunc} AS key, n.result, "
            f"count(*)::integer AS events, d.domain_name {_keyed(ROLLUP_DIMENSIONS)} GROUP BY 1, 2, 3, 4, 6), "
            "minutely AS ("
            + _upsert_sql(Rollup, "minute", "SELECT t, dimension, key, result, events, domain_name FROM counted")
            + "), hourly AS ("
            + _upsert_sql(
                HourlyRollup,
                "hour",
                f"SELECT h, dimension, key, result, sum(events), domain_name FROM ({per_hour}) AS c "  # noqa: S608
                "GROUP BY 1, 2, 3, 4, 6",
            )
            + ") SELECT event_id FROM ins"
        )
    return _STATEMENTS["create"], _STATEMENTS["copy"], _STATEMENTS["insert"]


def _insert_and_roll_up(rows: list[dict]) -> set[uuid.UUID]:
    """PostgreSQL: COPY the batch into a temporary table, then one statement inserts the new
    events and adds them to both rollups (counted by the server, not in Python).

    In a transaction of its own if the caller has none: the batch table is emptied at commit.
    """
    create, copy_sql, insert = _statements()
    names = [f.attname for f in _columns()]
    defaults = [f.get_default() for f in _columns()]
    with transaction.atomic(savepoint=False):  # no SAVEPOINT round trips inside ingest_events' transaction
        connection.ensure_connection()
        with connection.wrap_database_errors, connection.connection.cursor() as cursor:
            cursor.execute(create)
            with cursor.copy(copy_sql) as copy:
                write = copy.write_row
                for row in rows:
                    # validate() and _enrich() produce the stored values (UUID, aware datetimes, str,
                    # int, float, None) and classify_and_learn() sets "suspect": written as they are.
                    values = [row.get(n, d) for n, d in zip(names, defaults, strict=True)]
                    values += [row["client_ip"], row["asn_key"], listener_key(row["listener"], row["tls"])]
                    write(values)
            cursor.execute(insert)
            return {value for (value,) in cursor.fetchall()}


def ingest_events(events, *, replay: bool = False, detect: bool = True, notify: bool = True) -> IngestReport:
    """The one entry point for auth events (Celery task, import command, tests)."""
    report = IngestReport(received=len(events) if hasattr(events, "__len__") else 0)
    now = timezone.now()
    rows, seen = [], set()
    place_cache: dict = {}
    lengths = prefix_lengths()
    for index, raw in enumerate(events):
        try:
            row = validate(raw, now=None if replay else now, lengths=lengths)
        except InvalidEvent as exc:
            report.invalid += 1
            report.invalid_reasons[str(exc)] += 1
            # Only the id and the reason: the event may carry things that must not be logged.
            event_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else "?"
            log.warning("auth event #%d (id %s) rejected: %s", index, str(event_id)[:40], exc)
            continue
        if row["event_id"] in seen:
            report.duplicates += 1
            continue
        seen.add(row["event_id"])
        row["received"] = now
        _enrich(row, place_cache)
        rows.append(row)
    if not rows:
        return report
    rows.sort(key=lambda r: r["ts"])
    from mailadmin.monitoring import detectors

    # Redelivered events are dropped before learning from them; the unique id catches races.
    known = known_event_ids([r["event_id"] for r in rows])
    fresh = [r for r in rows if r["event_id"] not in known]
    new_rows = []
    if fresh:
        with transaction.atomic():
            detectors.classify_and_learn(fresh)
            new_ids = insert_and_roll_up(fresh)
            new_rows = [r for r in fresh if r["event_id"] in new_ids]
            windows.note_late(new_rows, now)
    report.inserted = len(new_rows)
    report.duplicates += len(rows) - len(new_rows)
    if new_rows and detect:
        report.alerts = detectors.run_for_batch(new_rows, notify=notify)
    if report.invalid:
        log.warning("auth event batch: %s", report.as_dict())
    return report
