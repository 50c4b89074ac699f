"""The notified verification cache: the triggers' payloads, the cache's rules
(races, trust, clock and address at hit time), and the listener against the real
PostgreSQL (changes committed by another connection, the listener's connection killed).
SQLite: no listener, the verifier reads the database as before."""

import time
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from mailadmin.accounts import credentials, verify, verify_cache
from mailadmin.accounts.mailboxes import suspend
from mailadmin.accounts.models import AppPassword, Domain, Mailbox, PasswordPolicy
from mailadmin.accounts.verify import Reason, verify_password
from tests.smtpd.conftest import committed_call

from .conftest import GOOD_PASSWORD

NEW_PASSWORD = "quartz-Lantern-meadow-47-oboe"
ALICE = "alice@a.example"


def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY needs PostgreSQL")


def wait_for(predicate, timeout=1.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# --- the triggers -----------------------------------------------------------------------


@pytest.fixture
def notifications(transactional_db):
    postgres_only()
    params = connection.get_connection_params()
    conn = psycopg.Connection.connect(**params, autocommit=True)
    conn.execute(f"LISTEN {verify_cache.CHANNEL}")

    def received():
        return sorted({n.payload for n in conn.notifies(timeout=0.3)})

    yield received
    conn.close()


def test_triggers_name_what_changed(notifications, make_mailbox, domain_a):
    mailbox = make_mailbox(domain_a, "alice")
    app, _ = credentials.create_app_password(mailbox, "phone")
    notifications()
    credentials.set_password(mailbox, NEW_PASSWORD, enforce_policy=False)
    assert notifications() == [f"mailbox:{mailbox.pk}"]
    credentials.revoke_app_password(app)
    assert notifications() == [f"mailbox:{mailbox.pk}"]
    Domain.objects.filter(pk=domain_a.pk).update(require_app_passwords=True)
    assert notifications() == [f"domain:{domain_a.pk}"]
    policy = PasswordPolicy.global_policy()
    notifications()
    policy.max_age_days = 30
    policy.save()
    assert notifications() == ["policy:"]
    Mailbox.objects.filter(pk=mailbox.pk).delete()
    assert f"mailbox:{mailbox.pk}" in notifications()


def test_bookkeeping_writes_send_nothing(notifications, make_mailbox, domain_a):
    mailbox = make_mailbox(domain_a, "alice")
    app, _ = credentials.create_app_password(mailbox, "phone")
    notifications()
    verify.write_login(mailbox.pk, client_ip="192.0.2.1", mechanism="PLAIN", app_password_id=app.pk)
    Mailbox.objects.filter(pk=mailbox.pk).update(expiry_notice_sent_at=timezone.now())
    assert AppPassword.objects.get(pk=app.pk).last_used_ip == "192.0.2.1"
    assert notifications() == []


def test_truncate_says_all(notifications):
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE accounts_apppassword")
    assert notifications() == ["all"]


# --- the cache's rules (no database) ----------------------------------------------------


def entry(mailbox_id=1, **kwargs):
    values = dict(
        mailbox_id=mailbox_id,
        address=ALICE,
        credential="password",
        app_password_id=None,
        stored_hash="h",
        state="active",
        expires_at=None,
        networks=None,
        stored_at=time.monotonic(),
    )
    values.update(kwargs)
    return verify_cache.Entry(**values)


@pytest.fixture
def cache():
    cache = verify_cache.VerifyCache()
    cache.trust()
    return cache


@pytest.mark.embedded
def test_put_after_a_drop_of_what_it_read_is_refused(cache):
    now = timezone.now()
    since = cache.begin()
    cache.drop_mailbox(1)  # the change's notification arrived while the success was being checked
    assert not cache.put(since, ALICE, GOOD_PASSWORD, entry())
    assert cache.get(ALICE, GOOD_PASSWORD, now, None) is None
    since = cache.begin()
    cache.drop_mailbox(2)  # another mailbox: no matter
    assert cache.put(since, ALICE, GOOD_PASSWORD, entry())
    assert cache.get(ALICE, GOOD_PASSWORD, now, None).mailbox_id == 1
    assert cache.get(ALICE, "another secret", now, None) is None
    cache.invalidate("mailbox:1")
    assert cache.get(ALICE, GOOD_PASSWORD, now, None) is None


@pytest.mark.embedded
def test_unknown_payloads_and_lost_trust_clear_everything(cache):
    for payload in ("domain:3", "policy:", "all", "something new"):
        assert cache.put(cache.begin(), ALICE, GOOD_PASSWORD, entry())
        cache.invalidate(payload)
        assert len(cache) == 0, payload
    since = cache.begin()
    cache.distrust()
    cache.trust()  # reconnected: what was read before may have changed unheard
    assert not cache.put(since, ALICE, GOOD_PASSWORD, entry())
    cache.distrust()
    assert not cache.put(cache.begin(), ALICE, GOOD_PASSWORD, entry())
    assert cache.get(ALICE, GOOD_PASSWORD, timezone.now(), None) is None


@pytest.mark.embedded
def test_clock_address_and_staleness_are_checked_at_each_hit(cache, monkeypatch):
    now = timezone.now()
    networks = credentials.network_objects(["192.0.2.0/24", "not a network"])
    cache.put(cache.begin(), ALICE, GOOD_PASSWORD, entry(expires_at=now + timedelta(minutes=1), networks=networks))
    assert cache.get(ALICE, GOOD_PASSWORD, now, "192.0.2.9") is not None
    assert cache.get(ALICE, GOOD_PASSWORD, now, "198.51.100.1") is None
    assert cache.get(ALICE, GOOD_PASSWORD, now, None) is None
    assert cache.get(ALICE, GOOD_PASSWORD, now + timedelta(minutes=2), "192.0.2.9") is None
    # The listener stopped confirming its connection: nothing is answered any more.
    monkeypatch.setattr(verify_cache, "STALE_AFTER", 0.0)
    cache.confirm()
    assert not cache.live()
    assert cache.get(ALICE, GOOD_PASSWORD, now, "192.0.2.9") is None


@pytest.mark.embedded
def test_sqlite_or_switched_off_means_no_listener(settings, db):
    if connection.vendor == "postgresql":
        settings.VERIFY_CACHE_LISTEN = False  # on SQLite it stays on, and is ignored
    assert verify_cache.start() is None
    assert not verify_cache.cache.live()


# --- the listener against PostgreSQL ----------------------------------------------------


@pytest.fixture
def listener(transactional_db):
    postgres_only()
    verify_cache.stop()
    started = verify_cache.start()
    assert wait_for(verify_cache.cache.live, timeout=10), "the listener did not connect"
    yield started
    verify_cache.stop()


def cached_success(mailbox, secret=GOOD_PASSWORD, **kwargs):
    """Log in until the notified cache holds the success; the next hit must need no query."""
    # (A success checked while the set-up's own notifications arrive is not stored: try again.)
    assert wait_for(lambda: verify_password(ALICE, secret, **kwargs).ok and len(verify_cache.cache) == 1)
    assert verify.answer_cached(ALICE, secret, client_ip=kwargs.get("client_ip")) is not None


def refused_after(change, *args, secret=GOOD_PASSWORD, client_ip=None):
    """Commit the change elsewhere; the entry must be gone within the notification's
    delivery (polled ≤ 1 s), and the next verification refuses."""
    committed_call(change, *args)
    assert wait_for(lambda: verify.answer_cached(ALICE, secret, client_ip=client_ip) is None)
    return verify_password(ALICE, secret, client_ip=client_ip)


def test_a_hit_reads_nothing(listener, make_mailbox, domain_a, django_assert_num_queries):
    mailbox = make_mailbox(domain_a, "alice")
    cached_success(mailbox)
    verify.record_login(mailbox.pk, client_ip=None, mechanism="PLAIN")  # the throttle is warm
    with django_assert_num_queries(0):
        result = verify_password(ALICE, GOOD_PASSWORD, mechanism="PLAIN")
    assert result.ok and result.mailbox_id == mailbox.pk and result.credential == "password"


def test_password_change(listener, make_mailbox, domain_a):
    mailbox = make_mailbox(domain_a, "alice")
    cached_success(mailbox)
    result = refused_after(lambda: credentials.set_password(mailbox, NEW_PASSWORD, enforce_policy=False))
    assert result.reason == Reason.BAD_CREDENTIALS
    assert verify_password(ALICE, NEW_PASSWORD).ok


def test_suspend_and_disable(listener, make_mailbox, domain_a):
    mailbox = make_mailbox(domain_a, "alice")
    cached_success(mailbox)
    assert refused_after(lambda: suspend(Mailbox.objects.get(pk=mailbox.pk), "phished")).reason == Reason.SUSPENDED
    committed_call(lambda: Mailbox.objects.filter(pk=mailbox.pk).update(state=Mailbox.State.ACTIVE))
    assert wait_for(lambda: verify_password(ALICE, GOOD_PASSWORD).ok)
    cached_success(mailbox)
    change = lambda: Mailbox.objects.filter(pk=mailbox.pk).update(state=Mailbox.State.DISABLED)  # noqa: E731
    assert refused_after(change).reason == Reason.DISABLED


def test_domain_disabled_and_app_passwords_required(listener, make_mailbox, domain_a):
    mailbox = make_mailbox(domain_a, "alice")
    cached_success(mailbox)
    change = lambda: Domain.objects.filter(pk=domain_a.pk).update(require_app_passwords=True)  # noqa: E731
    assert refused_after(change).reason == Reason.APP_PASSWORD_REQUIRED
    committed_call(lambda: Domain.objects.filter(pk=domain_a.pk).update(require_app_passwords=False))
    assert wait_for(lambda: verify_password(ALICE, GOOD_PASSWORD).ok)
    cached_success(mailbox)
    assert (
        refused_after(lambda: Domain.objects.filter(pk=domain_a.pk).update(is_active=False)).reason == Reason.DISABLED
    )


def test_policy_that_expires_the_password(listener, make_mailbox, domain_a):
    mailbox = make_mailbox(domain_a, "alice")
    Mailbox.objects.filter(pk=mailbox.pk).update(password_changed_at=timezone.now() - timedelta(days=40))
    cached_success(mailbox)

    def expire():
        policy = PasswordPolicy.global_policy()
        policy.max_age_days = 30
        policy.save()

    assert refused_after(expire).reason == Reason.EXPIRED


def test_password_expiring_while_cached(listener, make_mailbox, domain_a, monkeypatch):
    mailbox = make_mailbox(domain_a, "alice")
    policy = PasswordPolicy.global_policy()
    policy.max_age_days = 30
    policy.save()
    Mailbox.objects.filter(pk=mailbox.pk).update(password_changed_at=timezone.now() - timedelta(days=29))
    cached_success(mailbox)
    later = timezone.now() + timedelta(days=2)
    monkeypatch.setattr(verify.timezone, "now", lambda: later)
    assert verify.answer_cached(ALICE, GOOD_PASSWORD) is None
    assert verify_password(ALICE, GOOD_PASSWORD).reason == Reason.EXPIRED


def test_app_password_revoked_expired_and_restricted(listener, make_mailbox, domain_a):
    mailbox = make_mailbox(domain_a, "alice")
    app, secret = credentials.create_app_password(mailbox, "phone")
    cached_success(mailbox, secret, client_ip="192.0.2.7")
    assert verify.answer_cached(ALICE, secret, client_ip="192.0.2.7")[1] == app.pk
    restrict = lambda: AppPassword.objects.filter(pk=app.pk).update(allowed_networks=["198.51.100.0/24"])  # noqa: E731
    assert refused_after(restrict, secret=secret, client_ip="192.0.2.7").reason == Reason.NETWORK_NOT_ALLOWED
    committed_call(lambda: AppPassword.objects.filter(pk=app.pk).update(allowed_networks=[]))
    assert wait_for(lambda: verify_password(ALICE, secret, client_ip="192.0.2.7").ok)
    cached_success(mailbox, secret, client_ip="192.0.2.7")
    expire = lambda: AppPassword.objects.filter(pk=app.pk).update(expires_at=timezone.now())  # noqa: E731
    assert refused_after(expire, secret=secret, client_ip="192.0.2.7").reason == Reason.EXPIRED
    committed_call(lambda: AppPassword.objects.filter(pk=app.pk).update(expires_at=None))
    assert wait_for(lambda: verify_password(ALICE, secret, client_ip="192.0.2.7").ok)
    cached_success(mailbox, secret, client_ip="192.0.2.7")
    revoke = lambda: credentials.revoke_app_password(AppPassword.objects.get(pk=app.pk))  # noqa: E731
    assert not refused_after(revoke, secret=secret, client_ip="192.0.2.7").ok


def test_listener_connection_killed(listener, make_mailbox, domain_a):
    mailbox = make_mailbox(domain_a, "alice")
    cached_success(mailbox)
    pid = listener.backend_pid

    def kill_and_change():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        credentials.set_password(Mailbox.objects.get(pk=mailbox.pk), NEW_PASSWORD, enforce_policy=False)

    committed_call(kill_and_change)
    # The password changed while nobody listened: the cache must not answer the old one.
    assert wait_for(lambda: not verify_cache.cache.live() or listener.backend_pid != pid)
    assert verify_password(ALICE, GOOD_PASSWORD).reason == Reason.BAD_CREDENTIALS
    assert verify_password(ALICE, NEW_PASSWORD).ok  # the database path meanwhile
    # It reconnects and answers from memory again.
    assert wait_for(lambda: verify_cache.cache.live() and listener.backend_pid not in (None, pid), timeout=10)
    assert verify_password(ALICE, NEW_PASSWORD).ok
    assert verify.answer_cached(ALICE, NEW_PASSWORD) is not None
    assert verify.answer_cached(ALICE, GOOD_PASSWORD) is None
