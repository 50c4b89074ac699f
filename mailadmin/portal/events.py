"""Portal sign-ins as auth events (DESIGN "Auth event"), listener "web".

Sent by name to monitoring's ingest task. A broker outage must never block or
break a sign-in: a background thread publishes (one attempt each), the request
never waits for it, and a failure is logged (without the event's contents) and
the event dropped. At most MAX_PENDING events wait in memory.
"""

import logging
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from django.utils import timezone

logger = logging.getLogger(__name__)

INGEST_TASK = "monitoring.ingest_auth_events"
LISTENER = "web"
MAX_PENDING = 1000

_lock = threading.Lock()
_pending = 0
_executor: ThreadPoolExecutor | None = None


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
    """Hand the event to the background sender; False if it had to be dropped."""
    global _pending, _executor
    with _lock:
        if _pending >= MAX_PENDING:
            logger.warning("portal sign-in event dropped: %d already waiting for the broker", _pending)
            return False
        _pending += 1
        if _executor is None:  # created lazily, so after any pre-fork in the web server
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="portal-events")
        executor = _executor
    executor.submit(_send, event)
    return True


def _send(event: dict) -> None:
    global _pending
    from mailadmin.celery import app

    try:
        app.send_task(INGEST_TASK, args=[[event]], queue="ingest", retry=False)
    except Exception as exc:  # broker down or misconfigured: the sign-in went on regardless
        logger.warning("portal sign-in event not queued (%s)", type(exc).__name__)
    finally:
        with _lock:
            _pending -= 1


def flush(timeout: float = 10.0) -> bool:
    """Wait until every queued event was sent or given up on (tests, shutdown)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _lock:
            if _pending == 0:
                return True
        time.sleep(0.01)
    return False


def record_signin(request, **fields) -> dict:
    event = build_event(request, **fields)
    publish(event)
    return event
