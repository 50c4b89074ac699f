"""The dashboard while ingest runs: staff users polling the overview fragment (as the
page's refresh.js does) on gunicorn while auth events stream into a real Celery
worker. A bounded version of bench/dashboard_load.py (20 users, 2,000 events/s,
results in bench/README.md): 5 users polling every 2 s, 200 events/s for 10 s.
No poll may fail, and every published event must be stored once."""

import pytest

from mailadmin.staff.models import Role
from tests.integration.processes import EventFeed, OverviewPollers, WebServer, staff_session, start_worker, wait_for
from tests.integration.test_faults import redis_server  # noqa: F401 (fixture)
from tests.smtpd.conftest import server_database_url, server_env

pytestmark = pytest.mark.integration
USERS, RATE, SECONDS, INTERVAL = 5, 200, 10.0, 2.0
NODE = "dashboard-load-node"


def test_overview_polled_by_staff_while_ingest_runs(transactional_db, redis_server, tmp_path):  # noqa: F811
    from mailadmin.accounts.models import Domain
    from mailadmin.monitoring.models import AuthEvent

    domain = Domain.objects.create(name="bench1.example")  # one of the feed's domains
    sessions = [
        staff_session(f"poller{i}@staff.example", **({"role": Role.DOMAIN_ADMIN, "domains": [domain]} if i % 2 else {}))
        for i in range(USERS)
    ]
    env = server_env(
        tmp_path,
        DATABASE_URL=server_database_url(),
        CELERY_BROKER_URL=redis_server.url,
        LOG_LEVEL="INFO",
    )
    web = WebServer(tmp_path, env, workers=2).start()
    worker, log = start_worker(env, tmp_path / "worker.log")
    try:
        feed = EventFeed(redis_server.url, RATE, SECONDS, NODE)
        pollers = OverviewPollers(web, sessions, INTERVAL, SECONDS).start()
        feed.start()
        feed.join(SECONDS + 60)
        pollers.join()
        assert feed.error is None and feed.published == RATE * SECONDS
        stored = AuthEvent.objects.filter(node=NODE)
        assert wait_for(lambda: stored.count() >= feed.published, timeout=60), (stored.count(), feed.published)
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
        web.stop()
    summary = pollers.summary()
    print(f"\n{summary}, feed behind at most {feed.behind * 1000:.0f} ms")
    assert pollers.errors == [] and summary["polls"] >= USERS * (SECONDS // INTERVAL)
    ids = list(stored.values_list("event_id", flat=True))
    assert len(ids) == len(set(ids)) == feed.published
