"""Redis SIGKILLed in the middle of a 10,000-attempt AUTH run and restarted on the
same port a few seconds later: every attempt is ingested exactly once.

Real processes on loopback only: the smtpd (`python -m smtpd`), one Celery ingest
worker and a throwaway `redis-server` (append-only, fsync always, as
deploy/redis/mailadmin.conf). The attempts go over real TLS sockets. To keep the
run bounded most of them are cheap for the server - cancelled exchanges
(`AUTH LOGIN` answered with `*`) and malformed base64, pipelined 50 at a time on
a few persistent connections - mixed with successful logins on fresh connections
(the first pays Argon2id, the rest hit the verifier's cache) and real failures
(wrong password, unknown user: Argon2id each, three per connection, the third
answered 535 then 421). SMTPD_AUTH_FAIL_DELAY is lowered to 10 ms.

What the client saw decides the expected counts per result; the database must
hold exactly that many events of each, with no duplicate event id.

Cost, measured on the shared 2-core machine at load average 7-11 (other test runs
beside it): the 10,000 attempts take ~28 s (the 9,870 cheap ones ~5 s; each fresh
TLS connection with a success ~120 ms, each three-failure session ~0.8 s), the worker
catches up ~15 s later; ~45 s for the test body in all.
"""

import base64
import threading
import time
from collections import Counter

import pytest

from tests.integration.processes import start_worker, wait_for
from tests.integration.test_faults import redis_server  # noqa: F401 (fixture)
from tests.smtpd.conftest import (  # noqa: F401 (fixtures)
    ALICE,
    PASSWORD,
    WRONG_PASSWORD,
    RawClient,
    committed,
    committed_call,
    module_accounts,
    server_env,
    smtpd_factory,
)
from tests.smtpd.test_events import restore_unacked

pytestmark = pytest.mark.integration

TOTAL = 10_000
ROUNDS = 50
PIPES = 4  # persistent connections carrying the cheap attempts
CHUNK = 50  # attempts per pipelined write
SUCCESSES_PER_ROUND = 2  # fresh connection each: one success per session
FAILURES_EVERY = 5  # rounds; one session of three failures
NODE = "redis-kill-node"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CHEAP = {
    # request, replies the client reads, result the event must carry
    "cancelled": (b"AUTH LOGIN\r\n*\r\n", ("334 VXNlcm5hbWU6", "501 5.7.0 Authentication cancelled")),
    "malformed": (b"AUTH PLAIN !!!\r\n", ("501 5.5.2 Invalid base64 data",)),
}


def pipelined(client: RawClient, count: int, seen: Counter) -> None:
    kinds = [("cancelled", "malformed")[i % 2] for i in range(count)]
    client.send(b"".join(CHEAP[k][0] for k in kinds))
    for kind in kinds:
        for expected in CHEAP[kind][1]:
            assert client.reply() == expected
        seen[kind] += 1


def success(server, seen: Counter) -> None:
    client = RawClient(server, "tls")
    client.cmd("EHLO redis-kill.test")
    assert client.cmd(f"AUTH PLAIN {b64(chr(0) + ALICE + chr(0) + PASSWORD)}") == "235 2.7.0 Authentication successful"
    seen["success"] += 1
    client.cmd("QUIT")
    client.close()


def failures(server, seen: Counter) -> None:
    """Three failures: the third is answered 535 and then 421, and the session ends."""
    client = RawClient(server, "tls")
    client.cmd("EHLO redis-kill.test")
    attempts = [
        (ALICE, WRONG_PASSWORD, "bad_credentials"),
        ("nobody@send.example", WRONG_PASSWORD, "unknown_user"),
        (ALICE, WRONG_PASSWORD + "-2", "bad_credentials"),
    ]
    for user, password, result in attempts:
        assert client.cmd(f"AUTH PLAIN {b64(chr(0) + user + chr(0) + password)}") == (
            "535 5.7.8 Authentication credentials invalid"
        )
        seen[result] += 1
    assert client.line() == "421 4.7.0 Too many failed authentication attempts, closing connection"
    assert client.closed()
    client.close()


@pytest.fixture
def allow_loopback(committed):  # noqa: F811
    """The detectors would rightly block 127.0.0.1 (every client here) as a brute force;
    allowlisted, every attempt gets the reply its credentials deserve."""
    from mailadmin.monitoring.models import AllowedNetwork

    network = committed_call(lambda: AllowedNetwork.objects.create(cidr="127.0.0.0/8", note="fault test"))
    yield
    committed_call(network.delete)


def test_redis_killed_mid_run_every_attempt_ingested_exactly_once(
    transactional_db,  # the 10,000 events and their rollups are flushed afterwards
    smtpd_factory,  # noqa: F811
    module_accounts,  # noqa: F811
    redis_server,  # noqa: F811
    allow_loopback,
    tmp_path,
):
    from mailadmin.monitoring.models import AuthEvent

    server = smtpd_factory(
        CELERY_BROKER_URL=redis_server.url,
        SMTPD_NODE_NAME=NODE,
        SMTPD_AUTH_FAIL_DELAY="0.01",
        SMTPD_AUTH_RATE_PER_IP="1000000",
        LOG_LEVEL="INFO",
    )
    env = server_env(tmp_path, CELERY_BROKER_URL=redis_server.url, LOG_LEVEL="INFO")
    logs = iter(tmp_path / f"worker{i}.log" for i in range(100))
    worker, log = start_worker(env, next(logs))
    restarts, restored = 0, False

    seen: Counter = Counter()
    pipes = []
    for _ in range(PIPES):
        client = RawClient(server, "tls")
        client.cmd("EHLO redis-kill.test")
        pipes.append(client)
    successes = SUCCESSES_PER_ROUND * ROUNDS
    failure_sessions = ROUNDS // FAILURES_EVERY
    cheap_total = TOTAL - successes - 3 * failure_sessions
    kill_round, killed_for = ROUNDS * 2 // 5, 4.0
    restarter = None
    started = time.monotonic()
    try:
        for round_no in range(ROUNDS):
            if round_no == kill_round:
                redis_server.kill()  # SIGKILL: no shutdown, whatever was in flight is cut
                restarter = threading.Timer(killed_for, redis_server.start)  # same port, same AOF
                restarter.start()
            share = cheap_total // ROUNDS + (round_no < cheap_total % ROUNDS)
            for i, client in enumerate(pipes):
                count = share // PIPES + (i < share % PIPES)
                for offset in range(0, count, CHUNK):
                    pipelined(client, min(CHUNK, count - offset), seen)
            for _ in range(SUCCESSES_PER_ROUND):
                success(server, seen)
            if round_no % FAILURES_EVERY == FAILURES_EVERY - 1:
                failures(server, seen)
        for client in pipes:
            client.cmd("QUIT")
        sent_in = time.monotonic() - started
        assert sum(seen.values()) == TOTAL
        restarter.join()

        # Like systemd's Restart=on-failure: Celery 5.7's worker may exit when Redis
        # vanishes under it with an acks_late message in hand.
        def settled():
            nonlocal worker, log, restarts
            if worker.poll() is not None:
                log.close()
                worker, log = start_worker(env, next(logs))
                restarts += 1
            return AuthEvent.objects.filter(node=NODE).count() >= TOTAL

        if not wait_for(settled, timeout=45, step=0.5):
            # A batch the dead worker held stays "unacked" for the visibility timeout
            # (an hour); this is what the next timeout (or an operator) does.
            restore_unacked(redis_server.url)
            restored = True
            assert wait_for(settled, timeout=45, step=0.5), "events missing after the restore"
        # At-least-once delivery may bring a batch twice: give a repeat the time to land.
        time.sleep(1.5)
    finally:
        if restarter is not None:
            restarter.join()
        worker.terminate()
        worker.wait(30)
        log.close()

    assert "broker unavailable, spooling auth events" in server.logs()
    assert "broker available again, replaying the spool" in server.logs()
    events = AuthEvent.objects.filter(node=NODE)
    ids = list(events.values_list("event_id", flat=True))
    assert len(ids) == len(set(ids)) == TOTAL
    stored = Counter(events.values_list("result", flat=True))
    assert stored == seen, (stored, seen)
    print(f"\n{TOTAL} attempts in {sent_in:.1f} s {dict(seen)}; worker restarts {restarts}, restored {restored}")
