"""Chart data for the dashboard: the ONE place that builds series and breakdowns.

Every function takes the requesting user and a TimeRange and returns data
already scoped to what that user may see:

- superadmins and all-domain auditors read the server-wide rollups
  (dimension "all", "ip", "country", "mechanism");
- a domain admin reads the auth events of their domains through the
  (domain_name, ts) index: one domain's events are far fewer rows than the
  server-wide per-username rollups it would otherwise have to filter.

Results are cached for a few seconds per (chart, scope, range) so that the
overview's polling costs one query set per bucket, not one per browser tab.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field

from django.core.cache import cache
from django.db import connection
from django.db.models import CharField, Count, DateTimeField, F, Func, Max, Q, Sum
from django.utils import timezone

from mailadmin.monitoring import windows
from mailadmin.monitoring.hourly import parse_listener_key
from mailadmin.monitoring.models import (
    FAILURE_RESULTS,
    Alert,
    AuthEvent,
    Block,
    HourlyRollup,
    Result,
    Rollup,
    WindowState,
)

log = logging.getLogger(__name__)

EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
# Preset ranges: (span, bucket). Bucket sizes keep every chart between 60 and 170 points.
PRESETS = {
    "1h": (dt.timedelta(hours=1), dt.timedelta(minutes=1)),
    "24h": (dt.timedelta(hours=24), dt.timedelta(minutes=15)),
    "7d": (dt.timedelta(days=7), dt.timedelta(hours=1)),
    "30d": (dt.timedelta(days=30), dt.timedelta(hours=6)),
}
DEFAULT_PRESET = "24h"
# Custom ranges take the smallest of these buckets that gives at most MAX_POINTS points.
BUCKET_LADDER = [dt.timedelta(minutes=m) for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440, 10080)]
MAX_POINTS = 240
MAX_CUSTOM_SPAN = dt.timedelta(days=400)
CACHE_SECONDS = 5  # the overview polls every 5 s: at most one computation per poll
TOP_LIMIT = 10
FAILED_COLOUR = "#c0392b"
SUCCESS_COLOUR = "#1e8449"


class RangeError(ValueError):
    """A custom range the user typed makes no sense; the message is shown as is."""


@dataclass(frozen=True)
class TimeRange:
    start: dt.datetime  # inclusive, aligned to the bucket
    end: dt.datetime  # exclusive, aligned to the bucket
    bucket: dt.timedelta
    preset: str  # "1h" … "30d" or "custom"

    @property
    def points(self) -> int:
        return int((self.end - self.start) / self.bucket)

    def buckets(self) -> list[dt.datetime]:
        return [self.start + i * self.bucket for i in range(self.points)]

    def cache_part(self) -> str:
        return f"{self.start.timestamp():.0f}-{self.end.timestamp():.0f}-{self.bucket.total_seconds():.0f}"

    def query_params(self) -> dict:
        if self.preset != "custom":
            return {"range": self.preset}
        return {
            "range": "custom",
            "start": self.start.strftime("%Y-%m-%dT%H:%M"),
            "end": self.end.strftime("%Y-%m-%dT%H:%M"),
        }


def floor_to(moment: dt.datetime, bucket: dt.timedelta) -> dt.datetime:
    return EPOCH + ((moment - EPOCH) // bucket) * bucket


def ceil_to(moment: dt.datetime, bucket: dt.timedelta) -> dt.datetime:
    floored = floor_to(moment, bucket)
    return floored if floored == moment else floored + bucket


def preset_range(preset: str, now: dt.datetime | None = None) -> TimeRange:
    span, bucket = PRESETS[preset]
    # The current (incomplete) bucket is the last point: the chart moves as events arrive.
    end = floor_to(now or timezone.now(), bucket) + bucket
    return TimeRange(start=end - span, end=end, bucket=bucket, preset=preset)


def parse_datetime(text: str) -> dt.datetime:
    """An ISO date/time from a form (datetime-local or full ISO); naive means UTC."""
    value = (text or "").strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RangeError(f"“{text[:40]}” is not a date and time (use YYYY-MM-DDTHH:MM).") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def custom_range(start_text: str, end_text: str) -> TimeRange:
    start, end = parse_datetime(start_text), parse_datetime(end_text)
    if end <= start:
        raise RangeError("The end of the range must be after its start.")
    if end - start > MAX_CUSTOM_SPAN:
        raise RangeError(f"A custom range may span at most {MAX_CUSTOM_SPAN.days} days.")
    span = end - start
    bucket = next((b for b in BUCKET_LADDER if span / b <= MAX_POINTS), BUCKET_LADDER[-1])
    return TimeRange(start=floor_to(start, bucket), end=ceil_to(end, bucket), bucket=bucket, preset="custom")


def range_from_params(params, now=None) -> tuple[TimeRange, str | None]:
    """The range a request asks for, and a message when it asked for nonsense (then: 24 h)."""
    preset = params.get("range") or DEFAULT_PRESET
    if preset in PRESETS:
        return preset_range(preset, now), None
    if preset == "custom":
        try:
            return custom_range(params.get("start", ""), params.get("end", "")), None
        except RangeError as exc:
            return preset_range(DEFAULT_PRESET, now), f"{exc} Showing the last 24 hours instead."
    return preset_range(DEFAULT_PRESET, now), "Unknown range; showing the last 24 hours."


# --- scoping ---------------------------------------------------------------------------


def sees_everything(user) -> bool:
    return bool(getattr(user, "sees_all_domains", False))


def domain_names(user) -> list[str]:
    """The user's domains, lower case, sorted; read once per request (the user object's lifetime)."""
    names = getattr(user, "_monitoring_domains", None)
    if names is None:
        names = sorted(n.lower() for n in user.domains.values_list("name", flat=True))
        user._monitoring_domains = names
    return names


def scope_key(user) -> str:
    if sees_everything(user):
        return "all"
    names = domain_names(user)
    return hashlib.sha256("|".join(names).encode()).hexdigest()[:16]


def scoped_events(user):
    return AuthEvent.objects.visible_to(user)


def hour_span(tr: TimeRange) -> tuple[dt.datetime, dt.datetime] | None:
    """The whole hours inside the range (read from HourlyRollup), None if there are none.

    The rest of the range (at most an hour at each end) is read from the minute rollups,
    so sums over any range are exactly the minute rollups' sums.
    """
    first, last = ceil_to(tr.start, HOUR), floor_to(tr.end, HOUR)
    return (first, last) if first < last else None


def _rollup_pieces(tr: TimeRange):
    """(table, time column, start, end) pieces that together cover the range once."""
    return _pieces_between(tr.start, tr.end)


def _pieces_between(start: dt.datetime, end: dt.datetime):
    """(table, time column, start, end): hourly rows for the whole hours, minute rows for the rest."""
    rollup, hourly = Rollup._meta.db_table, HourlyRollup._meta.db_table
    first, last = ceil_to(start, HOUR), floor_to(end, HOUR)
    if first >= last:
        return [(rollup, "minute", start, end)]
    pieces = [(rollup, "minute", start, first), (hourly, "hour", first, last), (rollup, "minute", last, end)]
    return [p for p in pieces if p[2] < p[3]]


def _rollup_union(dimension: str, tr: TimeRange, *, exclude_success=False, results=None):
    """SQL (and params) of the rows `key, result, count` of one dimension over the range,
    from hourly rows for whole hours and minute rows for the ends."""
    quote = connection.ops.quote_name
    parts, params = [], []
    for table, column, start, end in _rollup_pieces(tr):
        where = f"dimension = %s AND {quote(column)} >= %s AND {quote(column)} < %s"
        params += [
            dimension,
            connection.ops.adapt_datetimefield_value(start),
            connection.ops.adapt_datetimefield_value(end),
        ]
        if exclude_success:
            where += " AND result <> %s"
            params.append(Result.SUCCESS)
        if results is not None:
            where += f" AND result IN ({', '.join(['%s'] * len(results))})"
            params += list(results)
        # Identifiers come from model metadata; every value is a parameter.
        parts.append(f"SELECT key, result, {quote('count')} AS n FROM {quote(table)} WHERE {where}")  # noqa: S608
    return " UNION ALL ".join(parts), params


def _fetch(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def cache_seconds(tr: TimeRange) -> int:
    """Short ranges stay live; a 6-hour bucket need not be recomputed every 5 seconds."""
    return max(CACHE_SECONDS, min(int(tr.bucket.total_seconds()) // 60, 300))


def _cached(name, user, tr: TimeRange, compute):
    key = f"monitoring:chart:{name}:{scope_key(user)}:{tr.cache_part()}"
    try:
        value = cache.get(key)
    except Exception:  # a cache outage must not take the dashboard down
        log.warning("charts: cache unreachable", exc_info=True)
        return compute()
    if value is None:
        value = compute()
        try:
            cache.set(key, value, cache_seconds(tr))
        except Exception:
            log.warning("charts: cache unreachable", exc_info=True)
    return value


# --- window totals (mailadmin.monitoring.windows) -----------------------------------------


@dataclass(frozen=True)
class Window:
    """Window totals usable for a preset range: the window's sums plus `spans` give the range."""

    name: str
    version: int
    scopes: list[str] | None  # None: every domain; else the user's domains
    spans: list[tuple[dt.datetime, dt.datetime, int]]  # (start, end, +1/-1) to add to the sums
    # Results of queries over this window, kept for the request (window_top of one scope):
    # top IPs and the counters' attacking IPs share one read of the IP spans.
    memo: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


def window_for(user, tr: TimeRange) -> Window | None:
    """The window totals of this preset, when they are built, current and overlap the range."""
    if tr.preset not in windows.WINDOWS or not database_is_postgresql():
        return None
    # Read once per request (kept on the user object); every query re-checks the version.
    states = getattr(user, "_monitoring_windows", None)
    if states is None:
        states = user._monitoring_windows = {}
    if tr.preset not in states:
        states[tr.preset] = (
            WindowState.objects.filter(preset=tr.preset, stale=False).values_list("version", "first", "cut").first()
        )
    state = states[tr.preset]
    if state is None:
        return None
    # One Window per range and request, so that its memo is shared by the charts of a fragment.
    made = getattr(user, "_monitoring_window_objects", None)
    if made is None:
        made = user._monitoring_window_objects = {}
    if (tr, state) not in made:
        made[(tr, state)] = _make_window(user, tr, state)
    return made[(tr, state)]


def _make_window(user, tr: TimeRange, state) -> Window | None:
    version, first, cut = state
    if not (first < cut and first < tr.end and cut > tr.start):
        return None
    spans = []
    if tr.start < first:
        spans.append((tr.start, first, 1))
    elif first < tr.start:
        spans.append((first, tr.start, -1))
    if cut < tr.end:
        spans.append((cut, tr.end, 1))
    elif tr.end < cut:
        spans.append((tr.end, cut, -1))
    scopes = None if sees_everything(user) else domain_names(user)
    return Window(tr.preset, version, scopes, spans)


def global_rows(dimensions, start: dt.datetime, end: dt.datetime, sign: int = 1):
    """SQL parts (to join with UNION ALL) and params: rows (dimension, key, failures, attacks,
    total) × sign of server-wide dimensions over [start, end) — hourly rollups for the whole
    hours, minute rollups for the rest (listeners: the events; they have no minute rollups).
    What window spans and the windows' folds read (mailadmin.monitoring.windows)."""
    quote = connection.ops.quote_name
    parts, params = [], []
    for table, column, a, b in _pieces_between(start, end):
        dims = list(dimensions)
        if table == Rollup._meta.db_table and HourlyRollup.LISTENER in dims:
            dims.remove(HourlyRollup.LISTENER)
            parts.append(
                f"SELECT '{HourlyRollup.LISTENER}', {windows.EVENT_KEYS[HourlyRollup.LISTENER]}, "  # noqa: S608
                f"{windows.sums_sql('e.result', str(int(sign)))} "
                "FROM monitoring_authevent e WHERE e.ts >= %s AND e.ts < %s"
            )
            params += [a, b]
        if dims:
            sums = windows.sums_sql("result", f"{int(sign)} * {quote('count')}")
            parts.append(
                f"SELECT dimension, key, {sums} FROM {quote(table)} "  # noqa: S608 - metadata, constants
                f"WHERE dimension IN ({', '.join(['%s'] * len(dims))}) AND {column} >= %s AND {column} < %s"
            )
            params += [*dims, a, b]
    return parts, params


def _span_rows(w: Window, dimension: str):
    """SQL rows (key, f, a, t): failures, attacks and attempts to add (or subtract) to the
    window's totals for the range — from the rollups (every domain) or the domains' events."""
    parts, params = [], []
    for start, end, sign in w.spans:
        if w.scopes is None:
            rows, row_params = global_rows([dimension], start, end, sign)
            parts += [f"SELECT key, f, a, t FROM ({row}) AS g (dimension, key, f, a, t)" for row in rows]  # noqa: S608
            params += row_params
        else:
            parts.append(
                f"SELECT {windows.EVENT_KEYS[dimension]}, {windows.sums_sql('e.result', str(sign))} "  # noqa: S608
                "FROM monitoring_authevent e WHERE e.domain_name = ANY(%s) AND e.ts >= %s AND e.ts < %s"
            )
            params += [w.scopes, start, end]
    if not parts:
        return "SELECT ''::varchar, 0::bigint, 0::bigint, 0::bigint WHERE false", []
    return " UNION ALL ".join(parts), params


def _window_union(w: Window, dimension: str):
    """SQL rows (key, f, a, t) whose sums per key are the range's failures, attacks and attempts."""
    spans, span_params = _span_rows(w, dimension)
    scope = "scope = ''" if w.scopes is None else "scope = ANY(%s)"
    sql = (
        "SELECT key, failures, attacks, total FROM monitoring_windowtotal "  # noqa: S608 - constants
        f"WHERE preset = %s AND dimension = %s AND {scope} AND sub = '' UNION ALL {spans}"
    )
    return sql, [w.name, dimension] + ([] if w.scopes is None else [w.scopes]) + span_params


def _single_scope(w: Window) -> str | None:
    """The one scope ("" = every domain) a reader sees, None for several domains."""
    if w.scopes is None:
        return ""
    return w.scopes[0] if len(w.scopes) == 1 else None


def _window_fetch(w: Window, sql, params):
    """Rows of a query over the window, or None if the window changed meanwhile (then: rollups)."""
    rows = _fetch(sql, params)
    if WindowState.objects.filter(preset=w.name).values_list("version", "stale").first() != (w.version, False):
        return None
    return rows


def window_top(w: Window, dimension: str, limit: int | None = TOP_LIMIT) -> list[tuple[str, int]] | None:
    """Failures per key over the range, most first (ties by key).

    One scope: the candidates are the window's busiest `limit` keys (plus one per key the
    spans lower) and every key in the spans — no other key can rank above them, since
    its count is its window count. Several domains: every key of theirs is summed.
    """
    scope = _single_scope(w)
    if limit is not None and scope is not None:
        return _window_top_of_scope(w, scope, dimension, limit)[0]
    union, params = _window_union(w, dimension)
    sql = (
        f"SELECT key, SUM(f) AS n FROM ({union}) AS r (key, f, a, t) "  # noqa: S608 - built from constants
        "GROUP BY key HAVING SUM(f) > 0 ORDER BY n DESC, key"
    )
    if limit is not None:
        sql += " LIMIT %s"
        params.append(limit)
    rows = _window_fetch(w, sql, params)
    return None if rows is None else [(key, int(n)) for key, n in rows]


def _window_top_of_scope(w: Window, scope: str, dimension: str, limit: int):
    """(top keys as window_top returns them, attacking IPs) of one scope, or (None, None) if the
    window changed meanwhile. Attacking IPs only for the IP dimension (else None).

    The spans of the dimension are summed and matched with the window's rows once (j): the
    top keys are the window's busiest `limit` keys the spans do not touch (plus one per key
    the spans lower) and every key in the spans; the attacking IPs are the window's count,
    corrected for the IPs the spans bring in or take out. Kept in the Window's memo, so a
    fragment's top IPs and counters read the IP spans once.
    """
    memo_key = ("top", dimension, limit)
    if memo_key in w.memo:
        return w.memo[memo_key]
    spans, span_params = _span_rows(w, dimension)
    sql = f"""
    WITH d AS (SELECT key, SUM(f) AS f, SUM(a) AS a FROM ({spans}) AS s (key, f, a, t) GROUP BY key),
    j AS (
        SELECT d.key, d.f, d.a, COALESCE(w.failures, 0) AS wf, COALESCE(w.attacks, 0) AS wa FROM d
        LEFT JOIN monitoring_windowtotal w ON w.preset = %s AND w.scope = %s AND w.dimension = %s
            AND w.key = d.key AND w.sub = ''
    ),
    c AS (
        SELECT t.key, t.failures AS n FROM (
            SELECT key, failures FROM monitoring_windowtotal WHERE preset = %s AND scope = %s AND dimension = %s
            ORDER BY failures DESC, key LIMIT %s + (SELECT count(*) FROM d WHERE f < 0)
        ) AS t WHERE NOT EXISTS (SELECT 1 FROM d WHERE d.key = t.key)
        UNION ALL SELECT key, wf + f FROM j
    )
    SELECT i, key, n FROM (
        SELECT row_number() OVER (ORDER BY n DESC, key) AS i, key, n FROM c WHERE n > 0 ORDER BY n DESC, key LIMIT %s
    ) AS top
    """  # noqa: S608 - built from constants
    params = [*span_params, w.name, scope, dimension, w.name, scope, dimension, limit, limit]
    if dimension == Rollup.Dimension.IP:
        sql += f"""
        UNION ALL SELECT 0, NULL, COALESCE((SELECT SUM(total) FROM monitoring_windowtotal
            WHERE preset = %s AND scope = %s AND dimension = '{windows.ATTACKERS}' AND key = '' AND sub = ''), 0)
            + (SELECT count(*) FROM j WHERE wa <= 0 AND wa + a > 0)
            - (SELECT count(*) FROM j WHERE wa > 0 AND wa + a <= 0)
        """  # noqa: S608 - built from constants
        params += [w.name, scope]
    rows = _window_fetch(w, sql + " ORDER BY i", params)
    if rows is None:
        result = (None, None)
    elif dimension == Rollup.Dimension.IP:
        result = ([(key, int(n)) for _i, key, n in rows[1:]], int(rows[0][2]))
    else:
        result = ([(key, int(n)) for _i, key, n in rows], None)
    w.memo[memo_key] = result
    return result


def window_attackers(w: Window) -> int | None:
    """Distinct IPs with at least one FAILURE_RESULTS attempt in the range.

    One scope: the window's count, corrected for the IPs the spans bring in or take out
    (computed with the top IPs, _window_top_of_scope).
    """
    scope = _single_scope(w)
    if scope is not None:
        return _window_top_of_scope(w, scope, Rollup.Dimension.IP, TOP_LIMIT)[1]
    union, params = _window_union(w, Rollup.Dimension.IP)
    sql = f"SELECT count(*) FROM (SELECT key FROM ({union}) AS r (key, f, a, t) GROUP BY key HAVING SUM(a) > 0) AS k"  # noqa: S608
    rows = _window_fetch(w, sql, params)
    return None if rows is None else int(rows[0][0])


def window_users_tried(w: Window, ips: list[str]) -> dict[str, int] | None:
    """Distinct usernames tried (any result) per IP over the range: the window's count per
    (domain, IP), corrected by the (IP, username) pairs the spans bring in or take out."""
    scoped = w.scopes is not None
    in_scope = " AND scope = ANY(%s)" if scoped else ""
    e_scope = " AND e.domain_name = ANY(%s)" if scoped else ""
    spans, span_params = [], []
    for start, end, sign in w.spans:
        spans.append(
            f"SELECT host(e.client_ip), e.domain_name, e.username, {sign} FROM monitoring_authevent e "  # noqa: S608
            f"WHERE e.client_ip = ANY(%s::inet[]) AND e.ts >= %s AND e.ts < %s{e_scope}"
        )
        span_params += [ips, start, end] + ([w.scopes] if scoped else [])
    if not spans:
        spans = ["SELECT ''::text, ''::varchar, ''::varchar, 0 WHERE false"]
    sql = f"""
    WITH d AS (SELECT key, scope, sub, SUM(t) AS t FROM ({" UNION ALL ".join(spans)}) AS s (key, scope, sub, t)
               GROUP BY key, scope, sub),
    change AS (
        SELECT d.key, CASE WHEN COALESCE(w.total, 0) <= 0 AND COALESCE(w.total, 0) + d.t > 0 THEN 1
                           WHEN w.total > 0 AND w.total + d.t <= 0 THEN -1 ELSE 0 END AS n
        FROM d LEFT JOIN monitoring_windowtotal w ON w.preset = %s AND w.scope = d.scope
            AND w.dimension = 'ipuser' AND w.key = d.key AND w.sub = d.sub
    )
    SELECT key, SUM(n) FROM (
        SELECT key, total AS n FROM monitoring_windowtotal
        WHERE preset = %s AND dimension = '{windows.IP_USERS}' AND key = ANY(%s){in_scope}
        UNION ALL SELECT key, n FROM change
    ) AS u GROUP BY key
    """  # noqa: S608 - built from constants
    params = [*span_params, w.name, w.name, ips] + ([w.scopes] if scoped else [])
    rows = _window_fetch(w, sql, params)
    return None if rows is None else {key: int(n) for key, n in rows}


def latest_places(user, ips: list[str], tr: TimeRange) -> dict[str, tuple[str, int | None]]:
    """(country, ASN) of each IP's latest visible attempt in the range (PostgreSQL)."""
    scoped = not sees_everything(user)
    in_scope = " WHERE x.domain_name = ANY(%s)" if scoped else ""
    # Newest first through the (client_ip, ts) index; OFFSET 0 keeps the domain filter out of
    # the scan, so the planner does not walk the domain's events looking for this IP instead.
    sql = (
        "SELECT host(ip), e.country, e.asn FROM unnest(%s::inet[]) AS ip, LATERAL ("  # noqa: S608 - constants only
        "SELECT x.country, x.asn FROM (SELECT country, asn, domain_name FROM monitoring_authevent "
        "WHERE client_ip = ip AND ts >= %s AND ts < %s ORDER BY ts DESC OFFSET 0) AS x"
        f"{in_scope} LIMIT 1) AS e"
    )
    params = [ips, tr.start, tr.end]
    if scoped:
        params.append(domain_names(user))
    return {ip: (country, asn) for ip, country, asn in _fetch(sql, params)}


class HostText(Func):
    """An IP address as text ("192.0.2.7", no prefix length), as the rollups key it."""

    output_field = CharField()

    def as_postgresql(self, compiler, conn, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"host({sql})", params

    def as_sql(self, compiler, conn, **extra):  # SQLite stores the text already
        return compiler.compile(self.source_expressions[0])


class DateBin(Func):
    """Start of the fixed-size bucket (aligned to 2000-01-01 UTC) a timestamp falls in."""

    output_field = DateTimeField()

    def __init__(self, expression, bucket: dt.timedelta):
        super().__init__(expression)
        self.seconds = int(bucket.total_seconds())

    def as_postgresql(self, compiler, conn, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"date_bin(%s * interval '1 second', {sql}, timestamptz '2000-01-01 00:00:00+00')", [
            self.seconds,
            *params,
        ]

    def as_sql(self, compiler, conn, **extra):  # SQLite (the embedded default)
        sql, params = compiler.compile(self.source_expressions[0])
        epoch = "946684800"  # 2000-01-01 UTC
        expr = f"datetime(((CAST(strftime('%%s', {sql}) AS INTEGER) - {epoch}) / %s) * %s + {epoch}, 'unixepoch')"
        return expr, [*params, self.seconds, self.seconds]


# --- data --------------------------------------------------------------------------------


@dataclass
class Table:
    """A chart's numbers: what the JSON, the HTML table and the CSV all show."""

    name: str
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)
    # For charts: the label column and the value column(s) plotted.
    labels: list[str] = field(default_factory=list)
    series: dict[str, list[int]] = field(default_factory=dict)
    kind: str = "bar"

    @property
    def empty(self) -> bool:
        return not any(any(values) for values in self.series.values()) if self.series else not self.rows

    def as_json(self, tr: TimeRange) -> dict:
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "range": {
                "start": tr.start.isoformat(),
                "end": tr.end.isoformat(),
                "bucket_seconds": int(tr.bucket.total_seconds()),
            },
            "columns": self.columns,
            "rows": self.rows,
            "labels": self.labels,
            "series": self.series,
            "empty": self.empty,
        }


def timeline_counts(user, tr: TimeRange) -> dict[dt.datetime, dict[str, int]]:
    """{bucket start: {result: count}}: the "all" rollups for full visibility, the "domain"
    rollups of the user's domains otherwise (hourly rows for hour-multiple buckets)."""
    if sees_everything(user) and tr.bucket % HOUR == dt.timedelta(0):
        # Hour-multiple buckets (aligned to the hour like every bucket): hourly rows only.
        rows = (
            HourlyRollup.objects.filter(dimension=Rollup.Dimension.ALL, hour__gte=tr.start, hour__lt=tr.end)
            .annotate(bucket=DateBin(F("hour"), tr.bucket))
            .values("bucket", "result")
            .annotate(n=Sum("count"))
            .order_by()
        )
    elif tr.bucket % HOUR == dt.timedelta(0):
        # A domain admin's long ranges: the hourly "domain" rows of their domains.
        rows = (
            HourlyRollup.objects.visible_to(user)
            .filter(dimension=HourlyRollup.DOMAIN, hour__gte=tr.start, hour__lt=tr.end)
            .filter(key__in=domain_names(user))  # through the unique index
            .annotate(bucket=DateBin(F("hour"), tr.bucket))
            .values("bucket", "result")
            .annotate(n=Sum("count"))
            .order_by()
        )
    elif sees_everything(user):
        rows = (
            Rollup.objects.filter(dimension=Rollup.Dimension.ALL, minute__gte=tr.start, minute__lt=tr.end)
            .annotate(bucket=DateBin(F("minute"), tr.bucket))
            .values("bucket", "result")
            .annotate(n=Sum("count"))
            .order_by()
        )
    else:
        # A domain admin's short ranges: the minute "domain" rows of their domains.
        rows = (
            Rollup.objects.visible_to(user)
            .filter(dimension=Rollup.Dimension.DOMAIN, minute__gte=tr.start, minute__lt=tr.end)
            .filter(key__in=domain_names(user))  # through the unique index
            .annotate(bucket=DateBin(F("minute"), tr.bucket))
            .values("bucket", "result")
            .annotate(n=Sum("count"))
            .order_by()
        )
    counts: dict[dt.datetime, dict[str, int]] = {}
    for row in rows:
        bucket = row["bucket"]
        if timezone.is_naive(bucket):
            bucket = timezone.make_aware(bucket, dt.UTC)
        counts.setdefault(bucket.astimezone(dt.UTC), {})[row["result"]] = int(row["n"] or 0)
    return counts


def timeline(user, tr: TimeRange) -> Table:
    def compute():
        counts = timeline_counts(user, tr)
        labels, failed, success, rows = [], [], [], []
        for start in tr.buckets():
            by_result = counts.get(start, {})
            ok = by_result.get(Result.SUCCESS, 0)
            bad = sum(n for result, n in by_result.items() if result != Result.SUCCESS)
            labels.append(start.isoformat())
            failed.append(bad)
            success.append(ok)
            rows.append([start.strftime("%Y-%m-%d %H:%M"), bad, ok])
        return Table(
            name="timeline",
            title="Failed and successful logins",
            columns=["Bucket start (UTC)", "Failed", "Successful"],
            rows=rows,
            labels=labels,
            series={"failed": failed, "success": success},
            kind="line",
        )

    return _cached("timeline", user, tr, compute)


def _bar(name, title, columns, rows, value_index=-1) -> Table:
    """A bar chart of failures: labels from the first column, values from value_index."""
    return Table(
        name=name,
        title=title,
        columns=columns,
        rows=rows,
        labels=[str(r[0]) for r in rows],
        series={"failed": [int(r[value_index]) for r in rows]},
    )


def reasons(user, tr: TimeRange) -> Table:
    def compute():
        labels = dict(Result.choices)
        if sees_everything(user):
            union, params = _rollup_union(Rollup.Dimension.ALL, tr, exclude_success=True)
            sql = f"SELECT result, SUM(n) AS total FROM ({union}) AS r GROUP BY result ORDER BY total DESC, result"  # noqa: S608
            data = [[labels.get(result, result), int(n)] for result, n in _fetch(sql, params)]
            return _bar("reasons", "Failures by reason", ["Reason", "Failures"], data)
        w = window_for(user, tr)
        top = window_top(w, "result", limit=None) if w else None
        if top is not None:
            data = [[labels.get(result, result), n] for result, n in top]
            return _bar("reasons", "Failures by reason", ["Reason", "Failures"], data)
        rows = scoped_events(user).filter(ts__gte=tr.start, ts__lt=tr.end).values("result").annotate(n=Count("id"))
        rows = rows.exclude(result=Result.SUCCESS).order_by("-n", "result")
        data = [[labels.get(r["result"], r["result"]), int(r["n"])] for r in rows]
        return _bar("reasons", "Failures by reason", ["Reason", "Failures"], data)

    return _cached("reasons", user, tr, compute)


def _failures_by(user, tr, dimension, event_field):
    """Failures per value of one dimension: window totals where kept (preset ranges; every
    dimension for domain admins, IPs and mailboxes server-wide), else rollups for full
    visibility and events for domain admins."""
    kept = not sees_everything(user) or dimension in windows.GLOBAL_DIMENSIONS
    w = window_for(user, tr) if kept else None
    if w is not None:
        top = window_top(w, dimension)
        if top is not None:
            return top
    if sees_everything(user):
        union, params = _rollup_union(dimension, tr, exclude_success=True)
        sql = f"SELECT key, SUM(n) AS total FROM ({union}) AS r GROUP BY key ORDER BY total DESC, key LIMIT %s"  # noqa: S608
        return [(key, int(n)) for key, n in _fetch(sql, [*params, TOP_LIMIT])]
    # IPs as text, so ties come in the same order as from the rollups and window totals.
    value = HostText(F(event_field)) if event_field == "client_ip" else F(event_field)
    qs = (
        scoped_events(user)
        .filter(ts__gte=tr.start, ts__lt=tr.end)
        .exclude(result=Result.SUCCESS)
        .annotate(value=value)
        .values("value")
        .annotate(n=Count("id"))
        .order_by("-n", "value")[:TOP_LIMIT]
    )
    return [(r["value"], int(r["n"])) for r in qs]


def mechanisms(user, tr: TimeRange) -> Table:
    def compute():
        data = [[k or "(none)", n] for k, n in _failures_by(user, tr, Rollup.Dimension.MECHANISM, "mechanism")]
        return _bar("mechanisms", "Failures by mechanism", ["Mechanism", "Failures"], data)

    return _cached("mechanisms", user, tr, compute)


def countries(user, tr: TimeRange) -> Table:
    def compute():
        data = [[k or "??", n] for k, n in _failures_by(user, tr, Rollup.Dimension.COUNTRY, "country")]
        return _bar("countries", "Failures by country", ["Country", "Failures"], data)

    return _cached("countries", user, tr, compute)


def listeners(user, tr: TimeRange) -> Table:
    """Failures per listener port and TLS: window totals, hourly listener rows, events for the rest."""

    def compute():
        hours = hour_span(tr) if sees_everything(user) else None
        w = window_for(user, tr)
        rows = window_top(w, HourlyRollup.LISTENER, limit=None) if w else None
        if rows is not None:
            totals = {parse_listener_key(key): n for key, n in rows}
            top = [(listener, tls, n) for (listener, tls), n in _ordered_listeners(totals)]
        elif hours is None:
            qs = (
                scoped_events(user)
                .filter(ts__gte=tr.start, ts__lt=tr.end)
                .exclude(result=Result.SUCCESS)
                .values("listener", "tls")
                .annotate(n=Count("id"))
                .order_by("-n", "listener", "tls")[:TOP_LIMIT]
            )
            top = [(r["listener"], r["tls"], int(r["n"])) for r in qs]
        else:
            top = _listener_failures(tr, hours)
        data = [[f"{listener or 'web'} {tls or 'no TLS'}", n] for listener, tls, n in top]
        return _bar("listeners", "Failures by listener and TLS", ["Listener / TLS", "Failures"], data)

    return _cached("listeners", user, tr, compute)


def _listener_failures(tr: TimeRange, hours) -> list[tuple[int | None, str, int]]:
    """Server-wide failures per (listener, tls): hourly rows for whole hours, events for the ends.

    Few distinct pairs exist, so they are merged and ordered here, as the events query
    orders them (count descending, then listener with the web listener last, then TLS).
    """
    totals: dict[tuple[int | None, str], int] = {}
    hourly = (
        HourlyRollup.objects.filter(dimension=HourlyRollup.LISTENER, hour__gte=hours[0], hour__lt=hours[1])
        .exclude(result=Result.SUCCESS)
        .values("key")
        .annotate(n=Sum("count"))
        .order_by()
    )
    for row in hourly:
        pair = parse_listener_key(row["key"])
        totals[pair] = totals.get(pair, 0) + int(row["n"])
    ends = AuthEvent.objects.filter(Q(ts__gte=tr.start, ts__lt=hours[0]) | Q(ts__gte=hours[1], ts__lt=tr.end))
    for row in ends.exclude(result=Result.SUCCESS).values("listener", "tls").annotate(n=Count("id")).order_by():
        pair = (row["listener"], row["tls"])
        totals[pair] = totals.get(pair, 0) + int(row["n"])
    return [(listener, tls, n) for (listener, tls), n in _ordered_listeners(totals)]


def _ordered_listeners(totals: dict) -> list:
    """As the events query orders them: count descending, then port (web last), then TLS."""
    ordered = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0][0] is None, kv[0][0] or 0, kv[0][1]))
    return [item for item in ordered if item[1]][:TOP_LIMIT]


def top_users(user, tr: TimeRange) -> Table:
    def compute():
        data = [[k, n] for k, n in _failures_by(user, tr, Rollup.Dimension.USERNAME, "username") if k]
        return _bar("top_users", "Most targeted mailboxes", ["Mailbox", "Failures"], data)

    return _cached("top_users", user, tr, compute)


def _event_details(user, ips: list[str], tr: TimeRange) -> dict:
    """Users tried, country and ASN per IP, from the visible events of the range."""
    return {
        r["client_ip"]: r
        for r in scoped_events(user)
        .filter(client_ip__in=ips, ts__gte=tr.start, ts__lt=tr.end)
        .values("client_ip")
        .annotate(users=Count("username", distinct=True), country=Max("country"), asn=Max("asn"))
        .order_by()
    }


def top_ips(user, tr: TimeRange) -> Table:
    """Top failing IPs with country, ASN, users tried and whether a block is active now."""

    def compute():
        failing = _failures_by(user, tr, Rollup.Dimension.IP, "client_ip")
        ips = [ip for ip, _ in failing]
        w = window_for(user, tr)
        users = window_users_tried(w, ips) if w and ips else None
        if users is not None:
            places = latest_places(user, ips, tr)
            details = {}
            for ip in ips:
                country, asn = places.get(ip, ("", None))
                details[ip] = {"users": users.get(ip, 0), "country": country, "asn": asn}
        else:
            details = _event_details(user, ips, tr)
        blocked = set(
            Block.objects.visible_to(user)
            .active()
            .filter(kind=Block.Kind.IP, value__in=ips)
            .values_list("value", flat=True)
        )
        data = []
        for ip, n in failing:
            d = details.get(ip, {})
            data.append([ip, d.get("country") or "", d.get("asn") or "", n, d.get("users", 0), ip in blocked])
        return _bar(
            "top_ips", "Top failing IPs", ["IP", "Country", "ASN", "Failures", "Users tried", "Blocked"], data, 3
        )

    return _cached("top_ips", user, tr, compute)


CHARTS = {
    "timeline": timeline,
    "reasons": reasons,
    "mechanisms": mechanisms,
    "countries": countries,
    "listeners": listeners,
    "top_users": top_users,
    "top_ips": top_ips,
}


def counters(user, tr: TimeRange) -> dict:
    def compute():
        series = timeline(user, tr).series
        w = window_for(user, tr)
        attackers = window_attackers(w) if w else None
        if attackers is None and sees_everything(user):
            union, params = _rollup_union(Rollup.Dimension.IP, tr, results=FAILURE_RESULTS)
            attackers = _fetch(f"SELECT COUNT(DISTINCT key) FROM ({union}) AS r", params)[0][0]  # noqa: S608
        elif attackers is None:
            attackers = (
                scoped_events(user)
                .filter(ts__gte=tr.start, ts__lt=tr.end, result__in=FAILURE_RESULTS)
                .values("client_ip")
                .distinct()
                .count()
            )
        open_alerts = dict(
            Alert.objects.visible_to(user)
            .filter(status__in=[Alert.Status.OPEN, Alert.Status.ACKNOWLEDGED])
            .values_list("severity")
            .annotate(n=Count("id"))
            .order_by()
        )
        return {
            "attempts": sum(series["failed"]) + sum(series["success"]),
            "failures": sum(series["failed"]),
            "successes": sum(series["success"]),
            "attacking_ips": attackers,
            "open_alerts": {s: open_alerts.get(s, 0) for s in ("critical", "high", "medium", "low")},
            "open_alerts_total": sum(open_alerts.values()),
            "active_blocks": Block.objects.visible_to(user).active().count(),
        }

    return _cached("counters", user, tr, compute)


# --- alert timeline and detector preview ------------------------------------------------


def events_timeline(events, tr: TimeRange) -> Table:
    """Failed/successful per bucket from an (already scoped) event queryset."""
    counts: dict[dt.datetime, dict[str, int]] = {}
    rows = (
        events.filter(ts__gte=tr.start, ts__lt=tr.end)
        .annotate(bucket=DateBin(F("ts"), tr.bucket))
        .values("bucket")
        .annotate(ok=Count("id", filter=Q(result=Result.SUCCESS)), total=Count("id"))
        .order_by()
    )
    for row in rows:
        bucket = row["bucket"]
        if timezone.is_naive(bucket):
            bucket = timezone.make_aware(bucket, dt.UTC)
        counts[bucket.astimezone(dt.UTC)] = {"ok": row["ok"], "bad": row["total"] - row["ok"]}
    labels, failed, success, data = [], [], [], []
    for start in tr.buckets():
        c = counts.get(start, {"ok": 0, "bad": 0})
        labels.append(start.isoformat())
        failed.append(c["bad"])
        success.append(c["ok"])
        data.append([start.strftime("%Y-%m-%d %H:%M"), c["bad"], c["ok"]])
    return Table(
        name="timeline",
        title="Attempts",
        columns=["Bucket start (UTC)", "Failed", "Successful"],
        rows=data,
        labels=labels,
        series={"failed": failed, "success": success},
        kind="line",
    )


def around(first: dt.datetime, last: dt.datetime, margin: dt.timedelta) -> TimeRange:
    """A range covering [first - margin, last + margin] with a sensible bucket."""
    start, end = first - margin, max(last + margin, first + margin + MINUTE)
    span = end - start
    bucket = next((b for b in BUCKET_LADDER if span / b <= 120), BUCKET_LADDER[-1])
    return TimeRange(start=floor_to(start, bucket), end=ceil_to(end, bucket), bucket=bucket, preset="custom")


# Rules whose firing can be estimated from rollups: rule → (dimension, threshold param, results
# counted). A threshold param of None: one attempt in a window fires it.
PREVIEWABLE = {
    "ip_bruteforce": (Rollup.Dimension.IP, "failures", FAILURE_RESULTS),
    "low_and_slow": (Rollup.Dimension.IP, "failures", FAILURE_RESULTS),
    "account_bruteforce": (Rollup.Dimension.USERNAME, "distinct_fingerprints", FAILURE_RESULTS),
    "surge": (Rollup.Dimension.ALL, "min_failures", FAILURE_RESULTS),
    "cleartext": (Rollup.Dimension.IP, None, (Result.TLS_REQUIRED,)),
}
# Why the others have no preview (shown on the settings page).
NOT_PREVIEWABLE = {
    "spray": "it counts distinct users and tries per user from an address; the rollups keep only totals per address",
    "stuffing": "it needs the distinct users per address or AS; the rollups keep only totals per address",
    "slow_distributed": "it needs the distinct addresses and passwords per user; the rollups keep only totals",
    "success_after_attack": "it depends on earlier alerts and each user's known addresses, not on counts",
    "new_country": "it compares each success with the user's own history of countries, which rollups do not keep",
    "new_asn": "it compares each success with the user's own history of networks, which rollups do not keep",
    "impossible_travel": "it needs the places and times of each user's successive logins",
    "dormant": "it needs each user's previous login, which rollups do not keep",
    "stale_client": "it needs the password fingerprints and networks of each user",
}


def preview_rule(rule: str, params: dict, *, days: int = 7, now=None) -> int | None:
    """How many times a rule with these params would have fired in the last `days` days.

    An estimate in rollup terms: failures (FAILURE_RESULTS) per entity in tumbling
    windows of the rule's window_minutes, counting windows that reach the
    threshold (cleartext: windows with a tls_required attempt per address). Per-credential
    and per-user distinctness are not in the rollups, so those rules count failures
    instead (an upper bound). None: not estimable (NOT_PREVIEWABLE says why).
    """
    if rule not in PREVIEWABLE:
        return None
    dimension, threshold_name, results = PREVIEWABLE[rule]
    try:
        threshold = 1 if threshold_name is None else int(params[threshold_name])
        window = dt.timedelta(minutes=int(params.get("window_minutes", 10)))
    except (KeyError, TypeError, ValueError):
        return None
    if threshold <= 0 or window <= dt.timedelta(0):
        return None
    end = timezone.now() if now is None else now
    start = end - dt.timedelta(days=days)
    qs = (
        Rollup.objects.filter(dimension=dimension, minute__gte=start, minute__lt=end, result__in=results)
        .annotate(window=DateBin(F("minute"), window))
        .values("key", "window")
        .annotate(n=Sum("count"))
        .filter(n__gte=threshold)
        .order_by()
    )
    return qs.count()


def database_is_postgresql() -> bool:
    return connection.vendor == "postgresql"
