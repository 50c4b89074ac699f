"""Portal sign-ins as auth events (DESIGN "Auth event"), listener "web".

Sent by name to monitoring's ingest task. A broker outage must never block or
break a sign-in: publishing is a single attempt, and failure is logged (without
the event's contents) and dropped.
"""

import logging
import socket
import uuid

from django.utils import timezone

logger = logging.getLogger(__name__)

INGEST_TASK = "monitoring.ingest_auth_events"
LISTENER = "web"


def client_ip(request) -> str:
    return request.META.get("REMOTE_ADDR") or "0.0.0.0"  # noqa: S104 - a placeholder, not a bind address


def build_event(request, *, username, result, mechanism, credential="none", pw_fp=None, latency_ms=None) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "ts": timezone.now().isoformat(),
        "node": socket.gethostname(),
        "session_id": uuid.uuid4().hex[:16],
        "attempt": 1,
        "client_ip": client_ip(request),
        "listener": LISTENER,
        "tls": "https" if request.is_secure() else None,
        "helo": "",
        "mechanism": mechanism,
        "username": username,
        "credential": credential,
        "result": result,
        "pw_fp": pw_fp,
        "latency_ms": latency_ms,
    }


def publish(event: dict) -> bool:
    from mailadmin.celery import app

    try:
        app.send_task(INGEST_TASK, args=[[event]], queue="ingest", retry=False)
    except Exception as exc:  # broker down or misconfigured: the sign-in goes on
        logger.warning("portal sign-in event not queued (%s)", type(exc).__name__)
        return False
    return True


def record_signin(request, **fields) -> dict:
    event = build_event(request, **fields)
    publish(event)
    return event
