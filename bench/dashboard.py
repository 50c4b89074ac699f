"""Dashboard benchmark: N auth events over 30 days in PostgreSQL, then p50/p95 of the
overview's data, each chart endpoint and filtered event searches.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailadmin_dashboard_bench \\
    SECRET_KEY=bench-secret-key-0123456789abcdef0123456789 \\
    .venv/bin/python bench/dashboard.py --events 10000000          # generate + measure
    ... bench/dashboard.py --measure-only                          # measure again

Events are generated inside PostgreSQL (generate_series, indexes dropped during the
load and rebuilt after) and the rollups are built with INSERT … SELECT … GROUP BY,
exactly as ingest would have accumulated them; then the 24 h / 7 d / 30 d window totals
are built as the beat task monitoring.advance_windows would (--measure-only
--build-windows rebuilds only those), and advance() runs before each case as the beat
does every minute. Requests go through Django's test
client (middleware, templates, JSON) with the chart cache cleared before each one,
so the numbers are cold-cache costs; the polling overview normally hits the cache.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")

USERS, DOMAINS, IPS = 5000, 50, 20000


def setup_django():
    import django

    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database of its own, e.g. .../mailadmin_dashboard_bench")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def timed(label, fn):
    start = time.perf_counter()
    fn()
    print(f"  {label}: {time.perf_counter() - start:.1f} s", flush=True)


def generate(n: int):
    from django.db import connection, transaction

    table = "monitoring_authevent"
    tables = (table, "monitoring_rollup", "monitoring_hourlyrollup")
    # DDL is transactional in PostgreSQL: a failed load leaves the indexes in place.
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SET LOCAL maintenance_work_mem = '1GB'; SET LOCAL work_mem = '256MB'")
        cur.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY")
        # Load without indexes (constraints re-added after), rows inserted in the order ingest
        # or CLUSTER would leave them: events by time, rollups by (dimension, time).
        rebuild = []
        for name in tables:
            cur.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass "
                "AND contype = 'u'",
                [name],
            )
            for con, definition in cur.fetchall():
                cur.execute(f'ALTER TABLE {name} DROP CONSTRAINT "{con}"')
                rebuild.append((con, f'ALTER TABLE {name} ADD CONSTRAINT "{con}" {definition}'))
            cur.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT LIKE %s",
                [name, "%pkey"],
            )
            for index, definition in cur.fetchall():
                cur.execute(f'DROP INDEX "{index}"')
                rebuild.append((index, definition))
        countries = (
            "ARRAY['US','DE','FR','GB','NL','CN','RU','BR','IN','VN','ID','IT','ES','PL','SE','JP','KR','TR','UA','ZA']"
        )
        # Skewed: a few IPs and users carry most attempts (random()^k).
        sql = f"""
        INSERT INTO {table} (event_id, ts, received, node, session_id, attempt, client_ip, prefix, listener, tls,
            helo, mechanism, username, domain_name, credential, result, pw_fp, suspect, latency_ms,
            country, city, latitude, longitude, asn, as_name, network_name, network_kind)
        SELECT gen_random_uuid(), ts, ts, 'smtp' || (g %% 3), md5(g::text)::varchar(16), 1,
            ip, network(set_masklen(ip, 24))::text,
            CASE WHEN g %% 4 = 0 THEN 465 ELSE 587 END,
            CASE WHEN g %% 10 = 0 THEN '' WHEN g %% 3 = 0 THEN 'TLSv1.2' ELSE 'TLSv1.3' END,
            'host' || ip_n || '.example',
            CASE WHEN r2 < 0.7 THEN 'PLAIN' WHEN r2 < 0.95 THEN 'LOGIN' ELSE 'SCRAM-SHA-256' END,
            'user' || user_n || '@d' || (user_n %% {DOMAINS}) || '.example', 'd' || (user_n %% {DOMAINS}) || '.example',
            'password',
            CASE WHEN r < 0.6 THEN 'success' WHEN r < 0.9 THEN 'bad_credentials'
                 WHEN r < 0.98 THEN 'unknown_user' ELSE 'blocked' END,
            (g %% 4096), r >= 0.6 AND r < 0.98, 5 + g %% 50,
            ({countries})[1 + ip_n %% 20], '', NULL, NULL, 64500 + ip_n %% 50, 'AS ' || (ip_n %% 50), '', ''
        FROM (
            SELECT g, now() - random() * interval '30 days' AS ts, random() AS r, random() AS r2,
                   floor(power(random(), 3) * {IPS})::int AS ip_n, floor(power(random(), 2) * {USERS})::int AS user_n
            FROM generate_series(1, %s) g
        ) s, LATERAL (SELECT '100.64.0.0'::inet + ip_n AS ip) i
        ORDER BY ts
        """
        timed(f"insert {n:,} events (time order)", lambda: cur.execute(sql, [n]))
        rollup = """
        INSERT INTO monitoring_rollup (minute, dimension, key, result, count, domain_name)
        SELECT date_trunc('minute', ts), %s, {key}, result, count(*), {domain}
        FROM monitoring_authevent {where} GROUP BY 1, 3, 4, 6 ORDER BY 1
        """
        dims = [  # what ingest's rollup_counts keeps
            ("all", "''", "''", ""),
            ("ip", "host(client_ip)", "''", ""),
            ("prefix", "prefix", "''", ""),
            ("username", "username", "domain_name", "WHERE username <> ''"),
            ("domain", "domain_name", "domain_name", "WHERE domain_name <> ''"),
            ("country", "country", "''", "WHERE country <> ''"),
            ("asn", "'AS' || asn", "''", "WHERE asn IS NOT NULL"),
            ("mechanism", "mechanism", "''", "WHERE mechanism <> ''"),
        ]
        for dim, key, domain, where in dims:
            q = rollup.format(key=key, domain=domain, where=where)
            timed(f"rollup {dim}", lambda q=q, dim=dim: cur.execute(q, [dim]))
        # What ingest adds to the hourly rollups alongside (same SQL as the migration's backfill).
        from mailadmin.monitoring.hourly import rebuild_sql

        timed("rollup hourly (all dimensions + listener)", lambda: cur.execute(rebuild_sql()))
        for name, definition in rebuild:
            timed(f"index {name}", lambda d=definition: cur.execute(d))
        timed("analyze", lambda: cur.execute("; ".join(f"ANALYZE {name}" for name in tables)))
    build_windows()


def build_windows():
    """What the beat task monitoring.advance_windows keeps current: the 24 h / 7 d / 30 d totals."""
    from django.db import connection

    from mailadmin.monitoring import windows

    with connection.cursor() as cur:
        cur.execute("TRUNCATE monitoring_windowtotal, monitoring_windowstate")
        cur.execute("SET work_mem = '256MB'")
    timed("window totals (24 h, 7 d, 30 d)", windows.advance)
    with connection.cursor() as cur:
        cur.execute("ANALYZE monitoring_windowtotal")


RESULT_SHARES = ((0.6, "success"), (0.9, "bad_credentials"), (0.98, "unknown_user"), (1.0, "blocked"))


def live_top_up(minutes: int) -> int:
    """Make the last `minutes` look like a live server's: events at the generated data's rate
    (n / 30 days, same skew) from the later of the data's end and now - minutes up to now,
    ingested as smtpd's batches are (ingest_events: minute and hourly rollups, and events of
    time a window already holds added to it by note_late, so the windows stay exact).
    Without it, a measurement an hour after generating finds the overview's spans (the
    time since the windows' last fold) empty."""
    import datetime as dt
    import random
    import uuid

    from django.db import connection
    from django.utils import timezone

    from mailadmin.monitoring.ingest import ingest_events

    now = timezone.now()
    with connection.cursor() as cur:
        cur.execute("SELECT count(*), max(ts) FROM monitoring_authevent")
        total, last = cur.fetchone()
    start = max(last, now - dt.timedelta(minutes=minutes))
    n = round(total * (now - start) / dt.timedelta(days=30))
    rng = random.Random(7)
    moments = sorted(start + (now - start) * rng.random() for _ in range(n))
    for i in range(0, n, 500):  # smtpd sends batches; ingest takes them one by one
        batch = []
        for ts in moments[i : i + 500]:
            r, ip_n, user_n = rng.random(), int(rng.random() ** 3 * IPS), int(rng.random() ** 2 * USERS)
            result = next(res for limit, res in RESULT_SHARES if r < limit)
            batch.append(
                {
                    "id": str(uuid.uuid4()),
                    "ts": ts.isoformat(),
                    "node": "smtp1",
                    "session_id": uuid.uuid4().hex[:16],
                    "client_ip": f"100.64.{ip_n // 256}.{ip_n % 256}",
                    "listener": 465 if rng.random() < 0.25 else 587,
                    "tls": rng.choice(["TLSv1.3", "TLSv1.3", "TLSv1.2", ""]),
                    "mechanism": "PLAIN" if rng.random() < 0.7 else "LOGIN",
                    "username": f"user{user_n}@d{user_n % DOMAINS}.example",
                    "credential": "password",
                    "result": result,
                    "pw_fp": rng.randrange(4096),
                    "latency_ms": 12,
                }
            )
        ingest_events(batch, replay=True, detect=False, notify=False)
    print(f"live top-up: {n:,} events {start:%H:%M:%S}–{now:%H:%M:%S} UTC", flush=True)
    return n


def percentiles(samples):
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered) * 1000, p95 * 1000


def measure(repeat: int, only: str = "", advance: bool = True):
    from django.core.cache import cache
    from django.test import Client

    from mailadmin.accounts.models import Domain
    from mailadmin.staff.models import Role, User

    root, _ = User.objects.get_or_create(email="bench-root@staff.example", defaults={"role": Role.SUPERADMIN})
    admin, _ = User.objects.get_or_create(email="bench-admin@staff.example", defaults={"role": Role.DOMAIN_ADMIN})
    domain, _ = Domain.objects.get_or_create(name="d7.example")
    admin.domains.set([domain])
    from allauth.mfa.models import Authenticator

    for user in (root, admin):  # the MFA middleware wants an authenticator; the secret is never used
        Authenticator.objects.get_or_create(user=user, type=Authenticator.Type.TOTP, defaults={"data": {"secret": "x"}})

    clients = {}
    for who, user in (("superadmin", root), ("domain admin", admin)):
        c = Client(HTTP_HOST="localhost")
        c.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        clients[who] = c

    from mailadmin.monitoring.charts import CHARTS

    cases = []
    for rng in ("1h", "24h", "7d", "30d"):  # issue 6's target: each of them
        cases.append((f"overview data (fragment: counters + all charts) {rng}", f"/monitoring/fragment/?range={rng}"))
    for name in CHARTS:
        cases.append((f"chart {name}.json 24h", f"/monitoring/charts/{name}.json?range=24h"))
        cases.append((f"chart {name}.json 30d", f"/monitoring/charts/{name}.json?range=30d"))
    cases += [
        ("event search, no filter (last 24 h)", "/monitoring/events/"),
        ("event search, result=failed, 7 days", "/monitoring/events/?result=failed&start=2000-01-01T00:00"),
        ("event search, username", "/monitoring/events/?username=user42@d42.example"),
        ("event search, IP", "/monitoring/events/?ip=100.64.0.7"),
        ("event search, CIDR /16", "/monitoring/events/?ip=100.64.0.0/16&result=unknown_user"),
        ("event search, country + mechanism", "/monitoring/events/?country=DE&mechanism=LOGIN"),
        ("event search, ASN + listener + no TLS", "/monitoring/events/?asn=64507&listener=465&tls=none"),
    ]
    from mailadmin.monitoring import windows

    cases = [case for case in cases if only in case[0]]
    for client in clients.values():  # warm the process (URLs, templates), not the data
        client.get("/monitoring/fragment/?range=1h")
    results = []
    for who, client in clients.items():
        for label, url in cases:
            if advance:
                windows.advance()  # as the beat does every minute (a no-op within the hour)
            samples = []
            for _ in range(repeat):
                cache.clear()
                start = time.perf_counter()
                response = client.get(url)
                body = response.content
                samples.append(time.perf_counter() - start)
                assert response.status_code == 200, (url, response.status_code, body[:200])
            p50, p95 = percentiles(samples)
            results.append((who, label, p50, p95))
            print(f"{who:13} {label:55} p50 {p50:8.1f} ms  p95 {p95:8.1f} ms", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--measure-only", action="store_true")
    parser.add_argument("--build-windows", action="store_true", help="with --measure-only: rebuild the windows first")
    parser.add_argument("--generate-only", action="store_true", help="generate and build, measure later")
    parser.add_argument("--only", default="", help="measure only the cases whose label contains this")
    parser.add_argument("--no-advance", action="store_true", help="do not advance the windows before each case")
    parser.add_argument(
        "--live-minutes",
        type=int,
        default=30,
        help="before measuring, ingest events at the data's rate for the last N minutes (0: none)",
    )
    args = parser.parse_args()
    setup_django()
    if not args.measure_only:
        generate(args.events)
    elif args.build_windows:
        build_windows()
    if args.generate_only:
        return
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM monitoring_authevent")
        events = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM monitoring_rollup")
        rollups = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM monitoring_hourlyrollup")
        hourly = cur.fetchone()[0]
        cur.execute("SELECT preset, count(*) FROM monitoring_windowtotal GROUP BY 1 ORDER BY 1")
        window_rows = ", ".join(f"{preset} {n:,}" for preset, n in cur.fetchall())
    print(f"{events:,} events, {rollups:,} rollup rows, {hourly:,} hourly rollup rows", flush=True)
    print(f"window total rows: {window_rows or 'none'}", flush=True)
    if args.live_minutes:
        live_top_up(args.live_minutes)
    measure(args.repeat, args.only, not args.no_advance)


if __name__ == "__main__":
    main()
