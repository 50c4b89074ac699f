"""Celery tasks of the monitoring app (explicit names; routed by CELERY_TASK_ROUTES)."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_init
from django.db import InterfaceError, OperationalError

log = logging.getLogger(__name__)


@worker_init.connect
def preload_geoip(**kwargs):
    """Load the offline GeoIP data in the worker's main process, before the pool forks:
    every child shares it instead of loading it (0.5-2 s) inside its first batch, which
    made the first detections after a worker (re)start the slowest (bench/latency.py)."""
    from mailadmin.monitoring.enrich import _geoip_reader

    _geoip_reader()


# Retried only while the database is unreachable (a lost connection, a server restarting):
# as long as it takes, at most 10 s apart so ingest resumes soon after the database does.
# An error in the data itself is not retried: the same batch would fail forever.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)


# Safe to repeat (idempotent insert), so acks_late: a worker killed mid-batch loses nothing.
@shared_task(
    name="monitoring.ingest_auth_events",
    acks_late=True,
    autoretry_for=TRANSIENT_DATABASE_ERRORS,
    retry_backoff=2,
    retry_backoff_max=10,
    max_retries=None,
)
def ingest_auth_events(events):
    from mailadmin.monitoring.ingest import ingest_events

    if not isinstance(events, list):
        log.warning("monitoring.ingest_auth_events: expected a list of events, got %s", type(events).__name__)
        return {"received": 0, "inserted": 0, "duplicates": 0, "invalid": 1, "alerts": 0}
    return ingest_events(events).as_dict()


# Safe to repeat too (item ids are stored with the counts, in one transaction), so acks_late.
@shared_task(
    name="monitoring.record_messages_sent",
    acks_late=True,
    autoretry_for=TRANSIENT_DATABASE_ERRORS,
    retry_backoff=2,
    retry_backoff_max=10,
    max_retries=None,
)
def record_messages_sent(items):
    from mailadmin.monitoring.sent import record_sent

    return record_sent(items if isinstance(items, list) else [])


@shared_task(name="monitoring.send_alert_email", autoretry_for=(OSError,), retry_backoff=5, max_retries=5)
def send_alert_email(alert_id):
    from mailadmin.monitoring.notify import send_immediate

    return send_immediate(alert_id)


@shared_task(name="monitoring.send_digests", autoretry_for=(OSError,), retry_backoff=30, max_retries=5)
def send_digests(kind="hourly"):
    from mailadmin.monitoring.notify import send_digests as send

    return send("daily" if kind == "daily" else "hourly")


@shared_task(name="monitoring.send_owner_notice", autoretry_for=(OSError,), retry_backoff=30, max_retries=3)
def send_owner_notice(alert_id):
    from mailadmin.monitoring.notify import send_owner_notice as send

    return send(alert_id)


@shared_task(name="monitoring.run_scheduled_detectors")
def run_scheduled_detectors():
    from django.utils import timezone

    from mailadmin.monitoring.detectors import run_scheduled

    return run_scheduled(timezone.now())


@shared_task(name="monitoring.prune_events")
def prune_events():
    from mailadmin.monitoring.retention import prune

    return prune()


@shared_task(name="monitoring.advance_windows")
def advance_windows():
    from mailadmin.monitoring.windows import advance

    return advance()
