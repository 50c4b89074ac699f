"""Celery tasks of the monitoring app (explicit names; routed by CELERY_TASK_ROUTES)."""

from __future__ import annotations

import json
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


# A busy worker takes the ingest batches already waiting in the broker along with its own, up
# to this many events, and ingests them as one batch: the per-batch work (baselines, detector
# queries, statements, commits) is paid once for all of them. Nothing waits for more to come:
# an idle queue gives a batch of one message, as before.
COALESCE_MAX_EVENTS = 5000
INGEST_TASK = "monitoring.ingest_auth_events"
_broker = {}  # this process's broker connection for taking queued batches (made after the fork)


def _decoded(message):
    """A taken message's body (args, kwargs, embed): the standard library's json.loads, in C,
    when kombu's own JSON decoder would return the same thing. kombu calls its object_hook (in
    Python) for every event object, to revive the values it tags with "__type__" (datetimes,
    UUIDs, ...): only a body that contains such a tag needs it."""
    body = message.body
    if (
        message.content_type == "application/json"
        and message.content_encoding in ("utf-8", "utf8")
        and isinstance(body, bytes | str)
        and ("__type__" not in body if isinstance(body, str) else b"__type__" not in body)
    ):
        return json.loads(body)
    return message.decode()


def _queued_batches(queue: str, budget: int) -> list:
    """[(message, events)] of ingest tasks waiting in `queue`, taken with a manual ack (Redis only).

    The messages stay in the broker's unacked set until acked or requeued: a worker that dies
    meanwhile loses nothing (they are restored, like any unacknowledged task). The first message
    that is not an ingest batch is put back and ends the taking.
    """
    from celery import current_app
    from kombu import Queue

    taken = []
    try:
        conn = _broker.get("conn")
        if conn is None:
            conn = current_app.connection_for_read()
            if conn.transport.driver_type != "redis":
                conn.release()
                _broker["conn"] = False
                return taken
            _broker["conn"] = conn
        elif conn is False:
            return taken
        source = Queue(queue, no_declare=True)(conn.default_channel)
        while budget > 0:
            message = source.get(no_ack=False, accept=["json"])
            if message is None:
                break
            if message.headers.get("task") != INGEST_TASK:
                message.reject(requeue=True)
                break
            args = _decoded(message)[0]
            events = args[0] if args and isinstance(args[0], list) else None
            taken.append((message, events))
            budget -= len(events) if events is not None else 1
    except Exception:
        log.warning("monitoring.ingest_auth_events: could not take queued batches", exc_info=True)
        _broker.pop("conn", None)
    return taken


# Safe to repeat (idempotent insert), so acks_late: a worker killed mid-batch loses nothing.
@shared_task(
    name=INGEST_TASK,
    bind=True,
    acks_late=True,
    autoretry_for=TRANSIENT_DATABASE_ERRORS,
    retry_backoff=2,
    retry_backoff_max=10,
    max_retries=None,
)
def ingest_auth_events(self, events):
    from mailadmin.monitoring.ingest import ingest_events

    if not isinstance(events, list):
        log.warning("monitoring.ingest_auth_events: expected a list of events, got %s", type(events).__name__)
        return {"received": 0, "inserted": 0, "duplicates": 0, "invalid": 1, "alerts": 0}
    taken = []
    if not self.request.is_eager and self.request.delivery_info:
        queue = self.request.delivery_info.get("routing_key") or "ingest"
        taken = _queued_batches(queue, COALESCE_MAX_EVENTS - len(events))
    batch = list(events)
    invalid = 0
    for _message, more in taken:
        if more is None:
            invalid += 1
            log.warning("monitoring.ingest_auth_events: a queued batch is not a list of events")
        else:
            batch += more
    try:
        report = ingest_events(batch).as_dict()
    except BaseException:
        for message, _events in taken:
            message.reject(requeue=True)  # delivered again (a retry of this task brings back only its own)
        raise
    for message, _events in taken:
        message.ack()
    report["invalid"] += invalid
    report["batches"] = 1 + len(taken)
    return report


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


@shared_task(name="monitoring.send_alert_emails", autoretry_for=(OSError,), retry_backoff=5, max_retries=5)
def send_alert_emails(alert_ids):
    """send_alert_email for each, in order (one task for a detector slice's alerts). A retry
    goes through the list again: send_immediate skips the recipients already mailed."""
    from mailadmin.monitoring.notify import send_immediate

    return sum(send_immediate(alert_id) for alert_id in alert_ids)


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
