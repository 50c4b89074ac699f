"""The dashboard under load while ingest runs: N signed-in staff users polling the
overview fragment every few seconds (as the page's refresh.js does) on gunicorn, while
auth events stream at a steady rate into a real Celery ingest worker.

    .venv/bin/python bench/dashboard_load.py --users 20 --rate 2000 --seconds 60

Needs the shared PostgreSQL (127.0.0.1:5432, user postgres) and `redis-server`; it
creates and migrates its own database (`mailadmin_dashload`, monitoring tables emptied
at the start), and runs a private redis-server on an ephemeral port for the broker and
the cache. Processes as in deploy/systemd: `gunicorn mailadmin.wsgi` (--web-workers,
DEBUG off), `celery -A mailadmin worker -Q ingest` (--worker-concurrency). Half the
staff users are superadmins, half domain admins of one of the feed's domains.

Reports poll latency p50/p95/max, failed polls (must be 0), ingest lag (the age of
the oldest published event not yet stored, sampled every second; and the time the
worker needed after the feed stopped), and events lost or duplicated (must be 0).
Exit status 1 on any failed poll or lost event. Results: bench/README.md.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATABASE = "mailadmin_dashload"
NODE = "dashload"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def prepare(url: str) -> None:
    import psycopg

    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        tables = [t for t in connection.introspection.table_names(cursor) if t.startswith("monitoring_")]
        keep = {"monitoring_detectorsetting", "monitoring_namednetwork", "monitoring_allowednetwork"}
        cursor.execute("TRUNCATE " + ", ".join(t for t in tables if t not in keep) + " CASCADE")


def staff(users: int) -> list[str]:
    from django.conf import settings

    from mailadmin.accounts.models import Domain
    from mailadmin.staff.models import Role, User
    from tests.integration.processes import staff_session

    # The staff passwords are random and never typed: skip Argon2 for their set-up.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    User.objects.filter(email__endswith="@dashload.example").delete()
    sessions = []
    for i in range(users):
        extra = {}
        if i % 2:
            domain, _ = Domain.objects.get_or_create(name=f"bench{i % 20}.example")
            extra = {"role": Role.DOMAIN_ADMIN, "domains": [domain]}
        sessions.append(staff_session(f"poller{i}@dashload.example", **extra))
    return sessions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--rate", type=int, default=2000, help="auth events per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between one user's polls")
    parser.add_argument("--web-workers", type=int, default=4)
    parser.add_argument("--worker-concurrency", type=int, default=2)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    args = parser.parse_args()

    url = f"{args.postgres}/{DATABASE}"
    os.environ.update(
        DJANGO_SETTINGS_MODULE="mailadmin.settings",
        DATABASE_URL=url,
        CELERY_BROKER_URL="redis://127.0.0.1:1/0",  # replaced below: this process only feeds by URL
        CACHE_URL="locmem://",
    )
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-0123456789abcdef0123456789")
    load_before = uptime()
    prepare(url)
    sessions = staff(args.users)

    from mailadmin.monitoring.models import AuthEvent
    from tests.integration.processes import EventFeed, OverviewPollers, WebServer, start_worker, wait_for
    from tests.smtpd.test_events import ThrowawayRedis

    tmp = Path(tempfile.mkdtemp(prefix="dashload-"))
    redis = ThrowawayRedis(tmp).start()
    env = {
        **os.environ,
        "CELERY_BROKER_URL": redis.url,
        "CACHE_URL": redis.url.replace("/0", "/1"),
        "VAR_DIR": str(tmp / "var"),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    web = WebServer(tmp, env, workers=args.web_workers).start()
    worker, log = start_worker(env, tmp / "worker.log", concurrency=args.worker_concurrency, loglevel="INFO")
    stored = AuthEvent.objects.filter(node=NODE)
    samples = []  # (time, stored so far)
    try:
        if not wait_for(lambda: "ready." in (tmp / "worker.log").read_text(), timeout=60):
            sys.exit("the Celery worker did not start:\n" + (tmp / "worker.log").read_text()[-2000:])
        feed = EventFeed(redis.url, args.rate, args.seconds, NODE)
        pollers = OverviewPollers(web, sessions, args.interval, args.seconds).start()
        started = time.monotonic()
        feed.start()
        stop_sampling = threading.Event()

        def sample():
            while not stop_sampling.wait(1.0):
                samples.append((time.monotonic(), stored.count()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        feed.join()
        pollers.join()
        feed_end = time.monotonic()
        wait_for(lambda: stored.count() >= feed.published, timeout=900, step=0.5)
        drained = time.monotonic() - feed_end
        stop_sampling.set()
        sampler.join()
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
        web.stop()
        redis.proc.terminate()
        redis.proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if feed.error:
        raise feed.error

    def lag(at, count):
        if count >= feed.published:
            return 0.0
        published = feed.published_at(count + 1)
        return max(0.0, at - published) if published is not None else 0.0

    lags = [lag(at, count) for at, count in samples if at >= started]
    ids = list(stored.values_list("event_id", flat=True))
    lost, duplicates = feed.published - len(set(ids)), len(ids) - len(set(ids))
    summary = pollers.summary()
    rate = feed.published / (feed_end - started)
    print(f"before: {load_before}\nafter:  {uptime()}  ({os.cpu_count()} CPUs)")
    print(f"the feed fell behind its own schedule by at most {feed.behind * 1000:.0f} ms")
    print(
        "| users | poll every | events/s offered (achieved) | seconds | polls | failed polls | poll p50 / p95 / max ms "
        "| max ingest lag s | drain after feed s | events | lost | duplicates |"
    )
    print("|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|")
    print(
        f"| {args.users} | {args.interval:g} s | {args.rate} ({rate:.0f}) | {args.seconds:g} | {summary['polls']} "
        f"| {summary['errors']} | {summary['p50_ms']:.0f} / {summary['p95_ms']:.0f} / {summary['max_ms']:.0f} "
        f"| {max(lags, default=0):.1f} | {drained:.1f} | {feed.published} | {lost} | {duplicates} |"
    )
    if pollers.errors:
        print("failed polls:", sorted(set(pollers.errors)))
    return 1 if (summary["errors"] or lost or duplicates) else 0


if __name__ == "__main__":
    sys.exit(main())
