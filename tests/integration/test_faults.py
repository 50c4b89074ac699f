"""Faults not covered by the smtpd and monitoring suites (broker killed mid-burst,
database outage, SIGTERM drain live in tests/smtpd): a Celery worker SIGKILLed in the
middle of ingesting, and an event spool that cannot be written. Real processes,
loopback only, bounded in time."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.integration.processes import start_worker, wait_for
from tests.monitoring.factories import event
from tests.smtpd.conftest import (  # noqa: F401 (fixtures)
    PASSWORD,
    ROOT,
    RawClient,
    committed,
    module_accounts,
    server_env,
    smtpd_factory,
)
from tests.smtpd.test_events import ThrowawayRedis, free_port, restore_unacked

pytestmark = pytest.mark.integration
# Enough that the kill lands mid-run: the worker takes up to 5,000 queued events per task
# (tasks.COALESCE_MAX_EVENTS) with two processes, so 6 batches could all be in before it.
BATCHES, BATCH_SIZE = 24, 1000


def publish(env, batches, tmp_path):
    """Publish batches with the smtpd's own publisher function, from another process."""
    path = tmp_path / "batches.json"
    path.write_text(json.dumps(batches))
    code = (
        "import json, sys, django; django.setup()\n"
        "from smtpd.events import celery_sender\n"
        "for batch in json.load(open(sys.argv[1])):\n"
        "    celery_sender('monitoring.ingest_auth_events', batch)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env, check=True, timeout=60)


@pytest.fixture
def redis_server(tmp_path):
    server = ThrowawayRedis(tmp_path).start()
    yield server
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait()


def test_worker_killed_mid_batch_redelivers_and_counts_each_event_once(transactional_db, redis_server, tmp_path):
    from mailadmin.monitoring.models import AuthEvent

    env = server_env(tmp_path, CELERY_BROKER_URL=redis_server.url, LOG_LEVEL="INFO")
    batches = [[event(username=f"user{b}@a.example") for _ in range(BATCH_SIZE)] for b in range(BATCHES)]
    all_ids = {e["id"] for batch in batches for e in batch}
    publish(env, batches, tmp_path)

    worker, log = start_worker(env, tmp_path / "worker.log")
    try:
        # Kill it while it is working: some events in, most still to come.
        assert wait_for(lambda: AuthEvent.objects.count() > 0, timeout=90), (tmp_path / "worker.log").read_text()
        # Kill it while it runs the second batch, not while it fetches one: kombu's
        # Redis transport moves a message to "unacked" just after BRPOP, and a
        # SIGKILL inside that gap loses the message (a broker limitation, not ours).
        assert wait_for(lambda: (tmp_path / "worker.log").read_text().count("] received") >= 2, timeout=30, step=0.02)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)
        killed_at = AuthEvent.objects.count()
        assert killed_at < len(all_ids), "the worker finished before it could be killed; raise BATCHES"

        # What an operator (or the visibility timeout) does: unacknowledged messages go back.
        restore_unacked(redis_server.url)
        # At-least-once delivery from the smtpd can also repeat a batch that was ingested.
        publish(env, [batches[0]], tmp_path)
        worker, log2 = start_worker(env, tmp_path / "worker2.log")
        try:
            assert wait_for(lambda: AuthEvent.objects.count() >= len(all_ids), timeout=120), (
                tmp_path / "worker2.log"
            ).read_text()
            time.sleep(1.0)  # the repeated batch is processed too, and adds nothing
            assert wait_for(lambda: _queue_empty(redis_server.url), timeout=60)
        finally:
            worker.terminate()
            worker.wait(30)
            log2.close()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
    stored = list(AuthEvent.objects.values_list("event_id", flat=True))
    assert len(stored) == len(all_ids) and {str(i) for i in stored} == all_ids


def _queue_empty(url):
    import redis

    client = redis.Redis.from_url(url)
    return client.llen("ingest") == 0 and not client.hlen("unacked")


def test_unwritable_spool_is_logged_and_counted_and_auth_still_works(smtpd_factory, module_accounts, tmp_path):  # noqa: F811
    # Root ignores permissions, so the spool path goes through a regular file:
    # mkdir and every write fail (ENOTDIR) whoever runs the tests.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    server = smtpd_factory(
        SMTPD_SPOOL_DIR=str(blocker / "spool"),
        CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",  # nobody listens: events must spool
        SMTPD_AUTH_FAIL_DELAY="0",
    )
    for _ in range(3):
        client = RawClient(server, "tls")
        client.cmd("EHLO client.test")
        blob = base64.b64encode(f"\0alice@send.example\0{PASSWORD}".encode()).decode()
        assert client.cmd(f"AUTH PLAIN {blob}") == "235 2.7.0 Authentication successful"
        client.cmd("QUIT")

    def dropped():
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics[0]}/metrics", timeout=5).read().decode()
        line = next((x for x in body.splitlines() if x.startswith("smtpd_events_dropped ")), "x 0")
        return float(line.split()[1])

    assert wait_for(lambda: dropped() >= 3, timeout=30)
    logs = server.logs()
    assert "event spool" in logs and "is not usable" in logs
    assert "cannot write the event spool" in logs and "DROPPED" in logs
    assert "Traceback" not in logs


def test_sigterm_with_100_open_sessions_loses_no_event(smtpd_factory, module_accounts, tmp_path, redis_server):  # noqa: F811
    """Broker down, 100 authenticated sessions open, SIGTERM: every session ends (the
    drain's 421), every auth event is in the on-disk spool, and the next start with the
    broker back publishes all of them."""
    import redis as redis_client

    spool = tmp_path / "spool"
    down = smtpd_factory(
        SMTPD_SPOOL_DIR=str(spool),
        CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
        SMTPD_AUTH_FAIL_DELAY="0",
        SMTPD_AUTH_RATE_PER_IP="100000",
    )
    blob = base64.b64encode(f"\0alice@send.example\0{PASSWORD}".encode()).decode()
    sessions = []
    for _ in range(100):
        client = RawClient(down, "tls")
        client.cmd("EHLO client.test")
        assert client.cmd(f"AUTH PLAIN {blob}") == "235 2.7.0 Authentication successful"
        sessions.append(client)
    down.signal(signal.SIGTERM)
    assert down.proc.wait(30) == 0
    ended = 0
    for client in sessions:
        try:
            line = client.line()
        except OSError:
            line = ""
        ended += line.startswith("421") or line == ""
    assert ended == 100

    def spooled_ids():
        ids = []
        for path in spool.rglob("*.json"):
            ids += [item["id"] for item in json.loads(path.read_text())["items"]]
        return ids

    ids = spooled_ids()
    assert len(ids) == len(set(ids)) == 100, len(ids)

    # Next start, broker back: the spool is replayed and emptied.
    smtpd_factory(SMTPD_SPOOL_DIR=str(spool), CELERY_BROKER_URL=redis_server.url)
    broker = redis_client.Redis.from_url(redis_server.url)

    def published_ids():
        found = []
        for raw in broker.lrange("ingest", 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            found += [item["id"] for item in body[0][0]]
        return found

    assert wait_for(lambda: set(published_ids()) >= set(ids), timeout=30)
    assert wait_for(lambda: not spooled_ids(), timeout=10)
