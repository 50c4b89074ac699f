"""Sustained auth-event ingest rate: PostgreSQL + Redis broker + real Celery workers.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailadmin_monitoring_bench \
    CELERY_BROKER_URL=redis://127.0.0.1:6379/11 CACHE_URL=redis://127.0.0.1:6379/12 \
    SECRET_KEY=... python bench/ingest.py --events 100000 --batch 500 --workers 2

Publishes batches by task name (as the smtpd does) to the `ingest` queue,
starts `celery -A mailadmin worker -Q ingest` processes, and measures from the
first publish until every event is in the database (0 lost is checked). Also
reports the in-process rate of ingest_events() without the broker. The traffic
mix is realistic: mostly successes of many users from many addresses, a few
percent failures (typos, stale clients) and an ongoing brute force, so the
detectors do real work. It DELETES the monitoring tables of its database.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")

import django  # noqa: E402

django.setup()

from mailadmin.celery import app  # noqa: E402
from mailadmin.monitoring.ingest import ingest_events  # noqa: E402
from mailadmin.monitoring.models import Alert, AuthEvent, Block, Rollup, UserBaseline  # noqa: E402
from tests.monitoring.factories import traffic  # noqa: E402


def reset():
    for model in (Block, Alert, AuthEvent, Rollup, UserBaseline):
        model.objects.all().delete()


def in_process(events, batch):
    reset()
    started = time.monotonic()
    for i in range(0, len(events), batch):
        ingest_events(events[i : i + batch], notify=False)
    return len(events) / (time.monotonic() - started)


def with_workers(events, batch, workers, concurrency):
    reset()
    client = app.connection_for_write().default_channel.client
    client.delete("ingest")
    env = dict(os.environ)
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
                "ingest",
                "-c",
                str(concurrency),
                "-n",
                f"bench{w}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for w in range(workers)
    ]
    try:
        time.sleep(6)  # workers up
        started = time.monotonic()
        for i in range(0, len(events), batch):
            app.send_task("monitoring.ingest_auth_events", args=[events[i : i + batch]], queue="ingest")
        published = time.monotonic() - started
        while AuthEvent.objects.count() < len(events):
            if time.monotonic() - started > 900:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        stored = AuthEvent.objects.count()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    return {"rate": len(events) / elapsed, "seconds": elapsed, "publish_seconds": published, "stored": stored}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(hours=1)
    events = traffic(args.events, start, rng)
    direct = in_process(events[: min(len(events), 20000)], args.batch)
    result = with_workers(events, args.batch, args.workers, args.concurrency)
    result.update(
        events=args.events,
        batch=args.batch,
        workers=args.workers,
        concurrency=args.concurrency,
        in_process_rate=round(direct),
        lost=args.events - result["stored"],
        load_average=os.getloadavg(),
        cpus=os.cpu_count(),
    )
    result["rate"] = round(result["rate"])
    print(json.dumps(result, indent=2, default=str))
