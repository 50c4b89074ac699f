"""End to end with real processes: failed AUTHs sent with smtplib to `python -m smtpd`
reach a Celery worker (queues ingest and alerts) over a throwaway Redis, are stored in
PostgreSQL, trip the detectors, and come back as a block the smtpd enforces and as
alert emails accepted by a real SMTP listener (aiosmtpd) — with the right content and
no password in them. Loopback only; each source is its own 127.x.y.z address."""

import base64
import datetime as dt
import re
import shutil
import time

import pytest

from tests.smtpd.conftest import server_env, smtpd_factory  # noqa: F401 (fixture)
from tests.smtpd.test_events import ThrowawayRedis, free_port

from .pipeline import CeleryWorker, Inbox, attack, auth_plain, pipeline_env, wait_until_blocked

pytestmark = pytest.mark.integration

DOMAIN = "victim.example"
USER = f"carol@{DOMAIN}"
PASSWORD = "Quiet-harbour-lantern-62-meadow"  # carol's real password
GUESSES = [f"Guess-{i:02d}-violet-Anchor-drift" for i in range(20)]
SECRETS = (PASSWORD, *GUESSES)
ROOT_ADMIN = "root@staff.example"
DOMAIN_ADMIN = "admin@victim.example"
OTHER_ADMIN = "admin@elsewhere.example"
ATTACKER = "127.0.1.1"  # IP brute force: 10 failures
HELPER = "127.0.3.1"  # more guesses at carol from another /24: account brute force
INTRUDER = "127.0.2.1"  # logs in with the right password after the attack: critical


def _no_secret(message):
    blobs = [base64.b64encode(f"\0{USER}\0{p}".encode()) for p in SECRETS]
    raw = message.raw
    text = message.part("plain") + message.part("html")
    for secret in SECRETS:
        assert secret.encode() not in raw and secret not in text, "a password reached an alert email"
    for blob in blobs:
        assert blob not in raw


@pytest.fixture
def pipeline(transactional_db, smtpd_factory, tmp_path):  # noqa: F811
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    redis = ThrowawayRedis(tmp_path).start()
    inbox = Inbox(free_port()).start()
    base = pipeline_env(
        {},
        broker_url=redis.url,
        cache_url=f"redis://127.0.0.1:{redis.port}/1",
        mail_port=inbox.port,
    )
    worker = CeleryWorker(server_env(tmp_path, **base, LOG_LEVEL="INFO"), tmp_path / "worker.log")
    try:
        worker.start()
        server = smtpd_factory(**base, SMTPD_AUTH_FAIL_DELAY="0.05", SMTPD_NODE_NAME="e2e-node")
        worker.wait_ready()
        yield server, worker, inbox
    finally:
        worker.stop()
        inbox.stop()
        redis.proc.terminate()
        redis.proc.wait()
    logs = worker.logs()
    for secret in SECRETS:
        assert secret not in logs, "a password reached the worker log"


@pytest.fixture
def people(transactional_db):
    from mailadmin.accounts.mailboxes import create_mailbox
    from mailadmin.accounts.models import Domain
    from mailadmin.staff.accounts import create_staff
    from mailadmin.staff.models import Role

    domain = Domain.objects.create(name=DOMAIN)
    elsewhere = Domain.objects.create(name="elsewhere.example")
    create_mailbox(domain, "carol", password=PASSWORD)
    create_staff(ROOT_ADMIN, role=Role.SUPERADMIN)
    create_staff(DOMAIN_ADMIN, role=Role.DOMAIN_ADMIN, domains=[domain])
    create_staff(OTHER_ADMIN, role=Role.DOMAIN_ADMIN, domains=[elsewhere])


def _about(rule_title):
    return lambda m: rule_title in m.subject


def test_failed_auths_become_an_enforced_block_and_alert_emails(pipeline, people):
    from mailadmin.monitoring.models import Alert, AuthEvent, Block

    server, worker, inbox = pipeline
    started = time.monotonic()

    # 1. IP brute force: ten different wrong passwords from one address (the smtpd
    #    closes each connection after three failures, so four connections).
    replies = attack(server.tls, ATTACKER, USER, GUESSES[:10])
    assert [code for code, _ in replies] == [535] * 10, replies
    crossed = time.monotonic()
    enforced = wait_until_blocked(server.tls, ATTACKER, USER, GUESSES[0], timeout=20)
    assert enforced is not None, worker.logs()[-3000:]
    at, reply = enforced
    assert reply == "454 4.7.0 Temporary authentication failure"
    print(f"block enforced {at - crossed:.2f} s after the threshold was crossed")

    block = Block.objects.get(kind=Block.Kind.IP, value=ATTACKER)
    assert block.rule == "ip_bruteforce" and block.lifted_at is None
    assert block.expires_at - block.created == dt.timedelta(minutes=15)
    alert = Alert.objects.get(rule="ip_bruteforce", entity_key=f"ip:{ATTACKER}")
    assert alert.severity == "high" and alert.count >= 10 and block.alert_id == alert.pk
    # The refused attempt is recorded as such (published, ingested).
    deadline = time.monotonic() + 10
    while not AuthEvent.objects.filter(client_ip=ATTACKER, result="blocked").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    blocked = AuthEvent.objects.filter(client_ip=ATTACKER, result="blocked").first()
    assert blocked is not None and blocked.node == "e2e-node" and blocked.username == USER

    mail = inbox.wait_for(_about("IP brute force"), timeout=20)
    assert mail is not None, worker.logs()[-3000:]
    assert mail.rcpt_tos == [ROOT_ADMIN]  # an IP belongs to no domain: the superadmins only
    assert mail.subject == f"[Mailadmin] HIGH IP brute force: {ATTACKER}"
    text, html = mail.part("plain"), mail.part("html")
    assert text and html, "text and HTML parts"
    assert re.search(rf"IP brute force: 1\d failed logins from ip {ATTACKER} in 10 min", text), text
    assert f"ip: {ATTACKER}" in text and "prefix: 127.0.1.0/24" in text
    assert re.search(r"Attempts counted: 1\d \(window 10 minutes\)", text), text
    samples = [line for line in text.splitlines() if line.strip().startswith("20") and ATTACKER in line]
    assert 1 <= len(samples) <= 10, text
    assert all("PLAIN" in s and "TLSv1." in s and "attacker.test" in s and "bad_credentials" in s for s in samples)
    until = f"{block.expires_at:%Y-%m-%d %H:%M} UTC"
    assert f"Action taken: blocked ip address {ATTACKER} for 15 min — until {until}" in text
    assert f"https://admin.send.example/monitoring/alerts/{alert.pk}/" in text
    assert f"https://admin.send.example/monitoring/alerts/{alert.pk}/" in html and ATTACKER in html
    _no_secret(mail)

    # 2. More guesses at the same account from another network: account brute force,
    #    an alert of carol's domain, so her domain's admin is mailed too.
    attack(server.tls, HELPER, USER, GUESSES[10:18])
    account = inbox.wait_for(_about("Account brute force"), timeout=20)
    assert account is not None, worker.logs()[-3000:]
    assert sorted(account.rcpt_tos) in ([ROOT_ADMIN], [DOMAIN_ADMIN])
    recipients = {m.rcpt_tos[0] for m in inbox.messages if "Account brute force" in m.subject}
    deadline = time.monotonic() + 10
    while recipients != {ROOT_ADMIN, DOMAIN_ADMIN} and time.monotonic() < deadline:
        time.sleep(0.1)
        recipients = {m.rcpt_tos[0] for m in inbox.messages if "Account brute force" in m.subject}
    assert recipients == {ROOT_ADMIN, DOMAIN_ADMIN}  # never the admin of another domain
    assert USER in account.part("plain")
    _no_secret(account)

    # 3. The right password from a third, never-seen address right after: success after
    #    attack (critical), the intruder's address blocked, everyone concerned mailed.
    replies = auth_plain(server.tls, INTRUDER, USER, [PASSWORD])
    assert replies[0][0] == 235
    critical = inbox.wait_for(_about("Successful login after an attack"), timeout=20)
    assert critical is not None, worker.logs()[-3000:]
    assert critical.subject == f"[Mailadmin] CRITICAL Successful login after an attack: {USER}"
    text = critical.part("plain")
    assert "the password may be compromised" in text and f"ip: {INTRUDER}" in text
    assert re.search(rf"{INTRUDER} .* PLAIN .* success", text), text
    # The intruder never attacked from this address (it may be shared): blocked for this user only.
    assert f"Action taken: blocked IP {INTRUDER} for {USER} for 15 min;" in text
    assert "consider suspending the mailbox" in text
    _no_secret(critical)
    enforced = wait_until_blocked(server.tls, INTRUDER, USER, PASSWORD, timeout=10)
    assert enforced is not None and enforced[1] == "454 4.7.0 Temporary authentication failure"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        to = {m.rcpt_tos[0] for m in inbox.messages if "CRITICAL" in m.subject}
        if to == {ROOT_ADMIN, DOMAIN_ADMIN}:
            break
        time.sleep(0.1)
    assert to == {ROOT_ADMIN, DOMAIN_ADMIN}

    for message in inbox.messages:
        assert OTHER_ADMIN not in message.rcpt_tos
        _no_secret(message)
    assert time.monotonic() - started < 60
