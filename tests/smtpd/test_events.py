"""Auth events reach a real Celery worker over a real (throwaway) Redis: one per
attempt, every result; a broker killed during a burst loses nothing."""

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from mailadmin.accounts.models import Mailbox
from mailadmin.monitoring.blocks import bump_version, create_block, lift_block
from mailadmin.monitoring.models import AuthEvent, Block

from .conftest import ALICE, BOB, OTHER_PASSWORD, PASSWORD, ROOT, WRONG_PASSWORD, RawClient, committed_call, server_env

pytestmark = [pytest.mark.django_db, pytest.mark.integration]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayRedis:
    """Our own redis-server on an ephemeral port (never the shared one), durable across kill -9."""

    def __init__(self, directory):
        self.dir, self.port, self.proc = directory, free_port(), None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
            + ["--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = ThrowawayRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait()


class Worker:
    """`celery -A mailadmin worker -Q ingest` against the throwaway broker and the test database."""

    def __init__(self, tmp, broker_url):
        self.env = server_env(tmp, CELERY_BROKER_URL=broker_url)
        self.log = open(tmp / "worker.log", "a")  # noqa: SIM115
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "mailadmin", "worker", "-Q", "ingest", "-c", "2"]
            + ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        return self

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def worker(redis, tmp_path_factory):
    worker = Worker(tmp_path_factory.mktemp("worker"), redis.url).start()
    yield worker
    worker.stop()
    worker.log.close()


def restore_unacked(broker_url: str) -> None:
    """What an operator does after a worker died holding messages: put its unacknowledged
    messages back on the queue (duplicates are harmless, ingest is idempotent)."""
    from kombu import Connection

    with Connection(broker_url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(num=10000)


@pytest.fixture(scope="module")
def server(worker, redis, module_accounts, smtpd_factory):
    return smtpd_factory(CELERY_BROKER_URL=redis.url, SMTPD_AUTH_FAIL_DELAY="0", SMTPD_NODE_NAME="events-node")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def wait_for_events(count: int, timeout: float = 60, **filters) -> list[AuthEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = list(AuthEvent.objects.filter(**filters))
        if len(events) >= count:
            return events
        time.sleep(0.2)
    return list(AuthEvent.objects.filter(**filters))


def test_every_result_arrives_at_the_worker(server, accounts):
    committed_call(lambda: Mailbox.objects.filter(pk=accounts["bob"].pk).update(state=Mailbox.State.DISABLED))
    block = committed_call(
        lambda: create_block(Block.Kind.IP_USER, "127.0.0.1", reason="test", username="blocked@send.example")
    )
    try:
        plain = RawClient(server, "starttls", tls=False)
        plain.cmd("EHLO c")
        assert plain.cmd(f"AUTH PLAIN {b64(chr(0) + ALICE + chr(0) + PASSWORD)}").startswith("538 ")  # tls_required
        client = RawClient(server, "tls")
        client.cmd("EHLO client.test")
        assert client.cmd("AUTH LOGIN").startswith("334")
        assert client.cmd("*").startswith("501 5.7.0")  # cancelled
        assert client.cmd("AUTH PLAIN !!!").startswith("501 5.5.2")  # malformed
        # blocked: an active IP+user block, answered as a temporary failure
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            reply = client.cmd(f"AUTH PLAIN {b64(chr(0) + 'blocked@send.example' + chr(0) + 'x-password-1')}")
            if reply.startswith("454"):
                break
            time.sleep(0.2)
        assert reply == "454 4.7.0 Temporary authentication failure"
        assert client.cmd(f"AUTH PLAIN {b64(chr(0) + ALICE + chr(0) + WRONG_PASSWORD)}").startswith("535")
        assert client.cmd(f"AUTH PLAIN {b64(chr(0) + 'nobody@send.example' + chr(0) + 'x')}").startswith("535")
        client = RawClient(server, "tls")
        client.cmd("EHLO client.test")
        assert client.cmd(f"AUTH PLAIN {b64(chr(0) + BOB + chr(0) + OTHER_PASSWORD)}").startswith("535")  # disabled
        assert client.cmd(f"AUTH PLAIN {b64(chr(0) + ALICE + chr(0) + PASSWORD)}").startswith("235")
    finally:
        committed_call(lambda: (lift_block(block), bump_version()))
    expected = {
        "tls_required",
        "cancelled",
        "malformed",
        "blocked",
        "bad_credentials",
        "unknown_user",
        "disabled",
        "success",
    }
    events = wait_for_events(len(expected), node="events-node", result__in=expected)
    assert {e.result for e in events} >= expected
    by_result = {e.result: e for e in events}
    assert by_result["success"].username == ALICE
    assert by_result["success"].credential == "password"
    assert by_result["success"].pw_fp is not None
    assert by_result["success"].tls.startswith("TLSv1.")
    assert by_result["tls_required"].tls == ""
    assert by_result["success"].listener == server.tls
    assert by_result["tls_required"].listener == server.starttls
    assert by_result["blocked"].username == "blocked@send.example"
    assert by_result["success"].helo == "client.test"


def test_successes_answered_from_the_cache_make_the_same_events(server, accounts):
    """The first success goes through the database; the next ones are answered on the
    event loop from the notified cache: one event each, with the same fields."""
    import urllib.request

    def loop_successes():
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics[0]}/metrics", timeout=5).read().decode()
        name = 'smtpd_auth_loop_answers_total{result="success"}'
        line = next((x for x in body.splitlines() if x.startswith(name)), "")
        return float(line.split()[-1]) if line else 0.0

    before = loop_successes()
    for _ in range(5):
        client = RawClient(server, "tls")
        client.cmd("EHLO cached.test")
        assert client.cmd(f"AUTH PLAIN {b64(chr(0) + ALICE + chr(0) + PASSWORD)}").startswith("235")
        client.close()
    assert loop_successes() >= before + 3
    events = wait_for_events(5, node="events-node", helo="cached.test")
    assert len(events) == 5
    fields = {
        (e.result, e.username, e.credential, e.mechanism, e.pw_fp, e.tls, e.listener, e.client_ip, e.attempt)
        for e in events
    }
    first = events[0]
    assert fields == {("success", ALICE, "password", "PLAIN", first.pw_fp, first.tls, server.tls, "127.0.0.1", 1)}
    assert len({e.session_id for e in events}) == 5 and all(e.latency_ms is not None for e in events)


def test_broker_killed_during_a_burst_loses_nothing(server, redis, worker, accounts):
    total, connections = 2000, 4
    clients = []
    for _ in range(connections):
        client = RawClient(server, "tls")
        client.cmd("EHLO burst.test")
        clients.append(client)
    per_client = total // connections
    sent = 0
    killed_at = total // 3
    for round_start in range(0, per_client, 50):
        for client in clients:
            # Pipelined: 50 cancelled attempts in one write, then read the replies.
            client.send("AUTH LOGIN\r\n*\r\n" * 50)
        for client in clients:
            for _ in range(50):
                assert client.reply() == "334 VXNlcm5hbWU6"
                assert client.reply() == "501 5.7.0 Authentication cancelled"
        sent += 50 * connections
        if sent >= killed_at and redis.proc.poll() is None and round_start < per_client // 2:
            redis.kill()
    assert sent == total
    # Keep the broker down until the server has noticed and spooled (under load the
    # last batches may still be in flight when the burst ends).
    deadline = time.monotonic() + 20
    while "broker unavailable, spooling auth events" not in server.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "broker unavailable, spooling auth events" in server.logs()
    redis.start()
    # Celery 5.7's worker exits on losing Redis with an acks_late message in hand
    # ("Unrecoverable error: AttributeError"); its supervisor would restart it.
    worker.stop()
    worker.start()
    events = wait_for_events(total, timeout=20, node="events-node", helo="burst.test")
    if len(events) < total:
        restore_unacked(redis.url)
        events = wait_for_events(total, timeout=60, node="events-node", helo="burst.test")
    assert len(events) == total
    assert len({e.event_id for e in events}) == total
    os.sync()
