"""Prometheus metrics; each worker process serves its own endpoint (base port + worker index)."""

from prometheus_client import Counter, Gauge, Histogram

AUTH_ATTEMPTS = Counter("smtpd_auth_attempts_total", "AUTH attempts by mechanism and result", ["mechanism", "result"])
SESSIONS = Gauge("smtpd_open_sessions", "Open SMTP sessions")
SESSIONS_TOTAL = Counter("smtpd_sessions_total", "SMTP sessions accepted", ["listener"])
MESSAGES = Counter("smtpd_messages_total", "Messages accepted for delivery")
PUBLISH_QUEUE = Gauge("smtpd_event_publish_queue_depth", "Auth events waiting in memory to be published")
SPOOL_BATCHES = Gauge("smtpd_event_spool_batches", "Event batches waiting in the on-disk spool")
SPOOL_DROPPED = Gauge("smtpd_events_dropped", "Auth events lost since start because the spool could not be written")
LOOP_ANSWERS = Counter(
    "smtpd_auth_loop_answers_total",
    "AUTHs answered on the event loop (notified verification cache or block snapshot)",
    ["result"],
)
VERIFY_CACHE_LIVE = Gauge("smtpd_verify_cache_live", "1 while this worker's credential-change listener is connected")
VERIFY_LATENCY = Histogram(
    "smtpd_verify_latency_seconds",
    "Time spent in the credential verifier (thread pool)",
    ["mechanism"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def start_metrics_server(address: str, publisher) -> tuple[str, int] | None:
    """Serve /metrics on host:port; gauges read the publisher at scrape time."""
    from prometheus_client import start_http_server

    from mailadmin.accounts import verify_cache

    PUBLISH_QUEUE.set_function(lambda: publisher.queue_depth)
    SPOOL_BATCHES.set_function(lambda: publisher.spooled_batches)
    SPOOL_DROPPED.set_function(lambda: publisher.dropped)
    VERIFY_CACHE_LIVE.set_function(lambda: int(verify_cache.cache.live()))
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0")  # noqa: S104 (only when configured so)
    return server.server_address[:2]
