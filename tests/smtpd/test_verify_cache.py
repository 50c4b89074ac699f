"""The real smtpd (2 workers, PostgreSQL) answers repeated successes from its notified
cache on the event loop, and every change that would refuse the credential refuses it
on the next AUTH (allowing only the NOTIFY's delivery: polled for at most 1 s)."""

import base64
import itertools
import re
import time
import urllib.request
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from mailadmin.accounts import credentials
from mailadmin.accounts.mailboxes import create_mailbox, suspend
from mailadmin.accounts.models import AppPassword, Domain, Mailbox, PasswordPolicy
from mailadmin.accounts.verify_cache import APPLICATION_NAME

from .conftest import OTHER_PASSWORD, PASSWORD, RawClient, committed_call, delete_domain

pytestmark = [pytest.mark.django_db, pytest.mark.integration]

_names = itertools.count()


@pytest.fixture(scope="module")
def server(committed, smtpd_factory):
    return smtpd_factory(["--workers", "2"], SMTPD_AUTH_FAIL_DELAY="0")


@pytest.fixture
def carol(committed):
    """A fresh domain and mailbox per test (the changes below would spoil shared ones),
    committed from another connection so the server sees them."""

    def make():
        domain = Domain.objects.create(name=f"vc{next(_names)}-{int(time.time())}.example")
        return create_mailbox(domain, "carol", password=PASSWORD)[0]

    def remove():
        PasswordPolicy.objects.filter(domain=None).update(max_age_days=0)
        delete_domain(Domain.objects.get(pk=mailbox.domain_id))

    mailbox = committed_call(make)
    yield mailbox
    committed_call(remove)


def auth(server, user, secret) -> str:
    client = RawClient(server, "starttls")
    try:
        client.cmd("EHLO client.test")
        blob = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
        return client.cmd(f"AUTH PLAIN {blob}")[:3]
    finally:
        client.close()


def metric(server, name: str, label: str = "") -> float:
    total = 0.0
    for port in server.metrics:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        for match in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", body, re.M):
            if label in (match.group(1) or ""):
                total += float(match.group(2))
    return total


def loop_successes(server) -> float:
    return metric(server, "smtpd_auth_loop_answers_total", 'result="success"')


def cached(server, user, secret) -> None:
    """Log in until the workers answer from their caches (both, very likely, after 8 connections)."""
    before = loop_successes(server)
    for _ in range(8):
        assert auth(server, user, secret) == "235"
    assert loop_successes(server) >= before + 4, "the repeated successes were not answered from the cache"


def refused_after(server, change, user, secret) -> str:
    """Commit the change, then the credential must be refused within the NOTIFY's delivery
    (≤ 1 s) and stay refused on the next connections (whichever worker takes them)."""
    committed_call(change)
    deadline = time.monotonic() + 1.0
    while (code := auth(server, user, secret)) == "235":
        assert time.monotonic() < deadline, "a stale success was answered more than 1 s after the change"
    for _ in range(6):
        assert auth(server, user, secret) == code
    return code


def test_password_change(server, carol):
    cached(server, carol.address, PASSWORD)
    change = lambda: credentials.set_password(Mailbox.objects.get(pk=carol.pk), OTHER_PASSWORD, enforce_policy=False)  # noqa: E731
    assert refused_after(server, change, carol.address, PASSWORD) == "535"
    assert auth(server, carol.address, OTHER_PASSWORD) == "235"


def test_suspended_and_disabled_mailbox(server, carol):
    cached(server, carol.address, PASSWORD)
    change = lambda: suspend(Mailbox.objects.get(pk=carol.pk), "phished")  # noqa: E731
    assert refused_after(server, change, carol.address, PASSWORD) == "535"
    committed_call(lambda: Mailbox.objects.filter(pk=carol.pk).update(state=Mailbox.State.ACTIVE))
    cached(server, carol.address, PASSWORD)
    change = lambda: Mailbox.objects.filter(pk=carol.pk).update(state=Mailbox.State.DISABLED)  # noqa: E731
    assert refused_after(server, change, carol.address, PASSWORD) == "535"


def test_domain_disabled(server, carol):
    cached(server, carol.address, PASSWORD)
    change = lambda: Domain.objects.filter(pk=carol.domain_id).update(is_active=False)  # noqa: E731
    assert refused_after(server, change, carol.address, PASSWORD) == "535"


def test_domain_requires_app_passwords(server, carol):
    cached(server, carol.address, PASSWORD)
    change = lambda: Domain.objects.filter(pk=carol.domain_id).update(require_app_passwords=True)  # noqa: E731
    assert refused_after(server, change, carol.address, PASSWORD) == "535"


def test_policy_change_expires_the_password(server, carol):
    committed_call(
        lambda: Mailbox.objects.filter(pk=carol.pk).update(password_changed_at=timezone.now() - timedelta(days=40))
    )
    cached(server, carol.address, PASSWORD)

    def expire():
        policy = PasswordPolicy.global_policy()
        policy.max_age_days = 30
        policy.save()

    assert refused_after(server, expire, carol.address, PASSWORD) == "535"


def test_app_password_revoked(server, carol):
    app, secret = committed_call(credentials.create_app_password, carol, "phone")
    cached(server, carol.address, secret)
    change = lambda: credentials.revoke_app_password(AppPassword.objects.get(pk=app.pk))  # noqa: E731
    assert refused_after(server, change, carol.address, secret) == "535"


def test_app_password_network_restriction(server, carol):
    app, secret = committed_call(credentials.create_app_password, carol, "phone")
    cached(server, carol.address, secret)
    change = lambda: AppPassword.objects.filter(pk=app.pk).update(allowed_networks=["192.0.2.0/24"])  # noqa: E731
    assert refused_after(server, change, carol.address, secret) == "454"  # network_not_allowed: a temporary failure


def listener_pids() -> set[int]:
    """(From a connection of its own: a transaction sees one snapshot of pg_stat_activity.)"""
    return committed_call(_listener_pids)


def _listener_pids() -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = current_database()",
            [APPLICATION_NAME],
        )
        return {row[0] for row in cursor.fetchall()}


def test_listener_connection_killed(server, carol):
    cached(server, carol.address, PASSWORD)
    assert metric(server, "smtpd_verify_cache_live") == 2
    pids = listener_pids()
    assert len(pids) == 2

    def kill_and_change():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [list(pids)])
        credentials.set_password(Mailbox.objects.get(pk=carol.pk), OTHER_PASSWORD, enforce_policy=False)

    committed_call(kill_and_change)
    # Nobody listened when the password changed: the old one must never be answered,
    # the new one works through the database meanwhile.
    for _ in range(4):
        assert auth(server, carol.address, PASSWORD) == "535"
        assert auth(server, carol.address, OTHER_PASSWORD) == "235"
    # Both workers reconnect and answer from memory again.
    deadline = time.monotonic() + 15
    while metric(server, "smtpd_verify_cache_live") < 2 or len(listener_pids() - pids) < 2:
        assert time.monotonic() < deadline, "the listeners did not come back"
        time.sleep(0.2)
    cached(server, carol.address, OTHER_PASSWORD)
    assert auth(server, carol.address, PASSWORD) == "535"
    assert "listener connection lost" in server.logs()
