"""Sustained auth-event ingest rate: PostgreSQL + Redis broker + real Celery workers.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailadmin_monitoring_bench \
    CELERY_BROKER_URL=redis://127.0.0.1:6379/11 CACHE_URL=redis://127.0.0.1:6379/12 \
    SECRET_KEY=... python bench/ingest.py --events 100000 --batch 2000 --workers 1

Publishes batches by task name (as the smtpd does) to the `ingest` queue,
starts `celery -A mailadmin worker -Q ingest` processes, and measures from the
first publish until every event is in the database (0 lost is checked). Also
reports the in-process rate of ingest_events() without the broker. The traffic
mix is realistic: mostly successes of many users from many addresses, a few
percent failures (typos, stale clients) and an ongoing brute force, so the
detectors do real work. It TRUNCATES the monitoring tables of its database.

Besides events per second it reports events per CPU-second: the CPU used by
the ingesting process (or the workers and their pool processes) and by their
PostgreSQL backends, read from /proc — on a shared machine that is the figure
that does not depend on what else runs.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")

import django  # noqa: E402

django.setup()

from django.db import DatabaseError, connection  # noqa: E402

from mailadmin.celery import app  # noqa: E402
from mailadmin.monitoring.ingest import ingest_events  # noqa: E402
from mailadmin.monitoring.models import Alert, AuthEvent, Block, HourlyRollup, Rollup, UserBaseline  # noqa: E402
from tests.monitoring.factories import traffic  # noqa: E402


def reset():
    models = (Block, Alert, AuthEvent, Rollup, HourlyRollup, UserBaseline)
    if connection.vendor != "postgresql":
        for model in models:
            model.objects.all().delete()
        return
    # TRUNCATE, not DELETE: every run starts from empty, unbloated tables. And from no planner
    # statistics at all: ANALYZE of an empty table keeps the column statistics of the last one
    # that had rows (an earlier run's, or none), so runs planned differently by history alone
    # (this server runs with autovacuum off; --analyze keeps them fresh as autovacuum would).
    tables = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in models)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")
        try:  # (a superuser's right: others get the history-dependent plans, and a warning)
            cursor.execute(
                "DELETE FROM pg_statistic WHERE starelid = ANY(%s::regclass[])", [[m._meta.db_table for m in models]]
            )
        except DatabaseError as exc:
            print(f"reset: planner statistics not cleared ({exc})", file=sys.stderr)
        cursor.execute(f"ANALYZE {tables}")


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pids) -> set[int]:
    """The processes and all their children (a prefork worker's pool processes)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    pids = list(pids)
    found, todo = set(pids), list(pids)
    while todo:
        parent = todo.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def database_backends(exclude_self=True) -> set[int]:
    """PostgreSQL server processes connected to this database (their CPU is ingest's)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            + (" AND pid <> pg_backend_pid()" if exclude_self else "")
        )
        return {pid for (pid,) in cursor.fetchall()}


def last_event_id() -> int | None:
    """The event table's id sequence as it stands (PostgreSQL; None elsewhere)."""
    if connection.vendor != "postgresql":
        return None
    table = AuthEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'id'))", [table])
        return cursor.fetchone()[0] or 0


def wait_for_ids(target, started):
    """Wait until the event ids reach `target` (a sequence read costs nothing) before counting rows.

    Counting the table five times a second scanned up to every event each time: on this 2-core
    box that poll took up to a tenth of a core from the PostgreSQL backends being measured. The
    ids are taken by inserts not yet committed too, so the exact count still decides the end.
    """
    if target is None:
        return
    while (last_event_id() or 0) < target and time.monotonic() - started < 900:
        time.sleep(0.05)


class Autoanalyze(threading.Thread):
    """ANALYZE the event table whenever it has grown by 2 % + 50 rows since the last one, checked
    every second: what autovacuum does in production (deploy/postgresql/mailadmin.conf:
    autovacuum_analyze_scale_factor = 0.02; the naptime aside) and this server, which runs with
    autovacuum off, does not. Without it the planner judges every detector query by the
    statistics of the empty table reset() left. `cpu_seconds`: its PostgreSQL backend's CPU."""

    def __init__(self, first_id):
        super().__init__(daemon=True)
        self.first_id, self.stop, self.cpu_seconds, self.runs = first_id, threading.Event(), 0.0, 0

    def run(self):
        table = connection.ops.quote_name(AuthEvent._meta.db_table)
        with connection.cursor() as cursor:  # this thread's own connection
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
            analyzed = 0
            while not self.stop.wait(1.0):
                rows = last_event_id() - self.first_id
                if rows - analyzed > 50 + 0.02 * analyzed:
                    cursor.execute(f"ANALYZE {table}")
                    analyzed, self.runs = rows, self.runs + 1
        self.cpu_seconds = cpu_seconds(pid)
        connection.close()


def in_process(events, batch):
    """Events per second and per CPU-second (this process + its PostgreSQL backend)."""
    reset()
    backend = database_backends(exclude_self=False) & {connection.connection.info.backend_pid}
    pg_before = sum(cpu_seconds(p) for p in backend)
    cpu_before = time.process_time()
    started = time.monotonic()
    for i in range(0, len(events), batch):
        ingest_events(events[i : i + batch], notify=False)
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_before + sum(cpu_seconds(p) for p in backend) - pg_before
    return {"rate": round(len(events) / elapsed), "per_cpu_second": round(len(events) / cpu), "cpu_seconds": cpu}


def with_workers(events, batch, workers, concurrency, pool="prefork", log_path=None, analyze=False, queues="ingest"):
    reset()
    client = app.connection_for_write().default_channel.client
    for queue in queues.split(","):
        client.delete(queue)  # (an earlier run's alert mail tasks too: their alerts are gone)
    env = dict(os.environ)
    log = open(log_path, "a") if log_path else subprocess.DEVNULL  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "mailadmin",
                "worker",
                "-Q",
                queues,
                "-c",
                str(concurrency),
                "--pool",
                pool,
                "-n",
                f"bench{w}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "INFO" if log_path else "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for w in range(workers)
    ]
    try:
        time.sleep(6)  # workers up
        pg_before = {pid: cpu_seconds(pid) for pid in database_backends()}
        workers_before = {pid: cpu_seconds(pid) for pid in descendants(p.pid for p in procs)}
        first_id = last_event_id()
        analyzer = Autoanalyze(first_id) if analyze else None
        if analyzer:
            analyzer.start()
        started = time.monotonic()
        for i in range(0, len(events), batch):
            app.send_task("monitoring.ingest_auth_events", args=[events[i : i + batch]], queue="ingest")
        published = time.monotonic() - started
        wait_for_ids(None if first_id is None else first_id + len(events), started)
        while AuthEvent.objects.count() < len(events):
            if time.monotonic() - started > 900:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        if analyzer:
            analyzer.stop.set()
            analyzer.join()
        # CPU used meanwhile by the workers (and their pool processes) and by their PostgreSQL
        # backends: a load-independent figure on a shared machine (the broker's is not counted).
        worker_cpu = sum(cpu_seconds(p) - workers_before.get(p, 0.0) for p in descendants(p.pid for p in procs))
        pg_cpu = sum(cpu_seconds(p) - pg_before.get(p, 0.0) for p in database_backends())
        pg_cpu += analyzer.cpu_seconds if analyzer else 0.0
        stored = AuthEvent.objects.count()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        if log_path:
            log.close()
    return {
        "rate": len(events) / elapsed,
        "seconds": elapsed,
        "publish_seconds": published,
        "stored": stored,
        "worker_cpu_seconds": round(worker_cpu, 1),
        "postgres_cpu_seconds": round(pg_cpu, 1),
        "per_cpu_second": round(len(events) / (worker_cpu + pg_cpu)) if worker_cpu + pg_cpu else None,
        "analyze": {"runs": analyzer.runs, "cpu_seconds": round(analyzer.cpu_seconds, 1)} if analyzer else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--pool", default="prefork", help="prefork, or solo (one task at a time per worker)")
    parser.add_argument(
        "--queues",
        default="ingest",
        help="the workers' queues: ingest (mailadmin-worker@ingest), or ingest,alerts to run the alert mail "
        "tasks the detectors publish on the same pool, as the one mailadmin-worker of a small installation does",
    )
    parser.add_argument("--no-in-process", dest="in_process", action="store_false")
    parser.add_argument(
        "--analyze",
        action="store_true",
        help="keep the event table statistics fresh, as autovacuum would",
    )
    parser.add_argument("--worker-log", help="append the workers' output (INFO: retries, deadlocks) to this file")
    args = parser.parse_args()
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(hours=1)
    events = traffic(args.events, start, rng)
    load_before = os.getloadavg()
    direct = in_process(events[: min(len(events), 20000)], args.batch) if args.in_process else {}
    result = {"stored": len(events)}  # --workers 0: in-process only
    if args.workers:
        result = with_workers(
            events, args.batch, args.workers, args.concurrency, args.pool, args.worker_log, args.analyze, args.queues
        )
    result.update(
        events=args.events,
        batch=args.batch,
        workers=args.workers,
        concurrency=args.concurrency,
        pool=args.pool,
        queues=args.queues,
        in_process_rate=direct.get("rate"),
        in_process_per_cpu_second=direct.get("per_cpu_second"),
        load_average_before=load_before,
        lost=args.events - result["stored"],
        load_average=os.getloadavg(),
        cpus=os.cpu_count(),
    )
    if "rate" in result:
        result["rate"] = round(result["rate"])
    print(json.dumps(result, indent=2, default=str))
