"""A real Celery worker process ingests a batch published by task name (as the smtpd does)."""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from mailadmin.monitoring.models import Alert, AuthEvent, Block

from .factories import event

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(transactional_db, tmp_path):
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("the worker test needs the Redis broker (make test sets it)")
    db = connection.settings_dict
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    from mailadmin.celery import app

    app.connection_for_write().default_channel.client.delete("ingest", "alerts")  # start from empty queues
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "mailadmin",
            "worker",
            "-Q",
            "ingest,alerts",
            "-c",
            "1",
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    # The worker's server-side session can outlive it briefly; the test database must be droppable.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_worker_ingests_a_published_batch_once_and_blocks_the_attacker(worker):
    from django.utils import timezone

    from mailadmin.celery import app

    now = timezone.now()
    batch = [event("203.0.113.66", "ann@a.example", ts=now, pw_fp=i) for i in range(12)]
    batch.append({"id": "garbage", "password": "hunter2"})
    app.send_task("monitoring.ingest_auth_events", args=[batch], queue="ingest")
    app.send_task("monitoring.ingest_auth_events", args=[batch], queue="ingest")  # redelivered
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if AuthEvent.objects.count() == 12 and Block.objects.filter(value="203.0.113.66").exists():
            break
        assert worker.poll() is None, worker.stdout.read()
        time.sleep(0.2)
    time.sleep(1.0)  # let the redelivered copy finish too
    assert AuthEvent.objects.count() == 12
    assert Alert.objects.filter(rule="ip_bruteforce", severity="high").count() == 1
    assert Block.objects.filter(kind="ip", value="203.0.113.66").exists()


def test_the_worker_loads_geoip_before_forking_its_pool():
    """worker_init (main process, before the prefork pool starts): the GeoIP data is loaded
    there, so no child spends its first batch loading it."""
    code = (
        "import django; django.setup()\n"
        "from celery.signals import worker_init\n"
        "from mailadmin.celery import app\n"
        "from mailadmin.monitoring import enrich\n"
        "app.loader.init_worker()\n"  # what WorkController does first: imports the tasks modules
        "assert enrich._geoip is None\n"
        "worker_init.send(sender=None)\n"
        "assert enrich._geoip, enrich._geoip\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), check=True, timeout=60)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_sent_counts_from_a_redelivered_batch_are_counted_once(worker):
    from django.utils import timezone

    from mailadmin.celery import app
    from mailadmin.monitoring.models import SentCount

    now = timezone.now()
    batch = [
        {"id": str(uuid.uuid4()), "username": "Ann@a.example", "ts": now.isoformat(), "count": 1} for _ in range(5)
    ]
    app.send_task("monitoring.record_messages_sent", args=[batch], queue="ingest")
    app.send_task("monitoring.record_messages_sent", args=[batch], queue="ingest")  # delivered again
    later = [{"id": str(uuid.uuid4()), "username": "ann@a.example", "ts": now.isoformat(), "count": 2}]
    app.send_task("monitoring.record_messages_sent", args=[later + batch[:2]], queue="ingest")  # partly repeated
    hour = now.replace(minute=0, second=0, microsecond=0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and SentCount.objects.filter(username="ann@a.example", count=7).count() != 1:
        assert worker.poll() is None, worker.stdout.read()
        time.sleep(0.2)
    time.sleep(1.0)  # every copy has been processed
    assert list(SentCount.objects.values_list("username", "hour", "count", "domain_name")) == [
        ("ann@a.example", hour, 7, "a.example")
    ]
