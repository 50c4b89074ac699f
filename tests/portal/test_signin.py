import base64
import json
import time

import pytest
import redis
from django.conf import settings
from django.urls import reverse

from mailadmin.accounts.credentials import create_app_password
from mailadmin.accounts.models import Mailbox
from mailadmin.portal import events as portal_events
from mailadmin.portal.models import OwnerSettings
from tests.oauth.helpers import PASSWORD, make_mailbox


@pytest.fixture
def alice(domain_a):
    return make_mailbox(domain_a, "alice")


def _login(client, address="alice@a.example", password=PASSWORD, **extra):
    return client.post(reverse("portal:login"), {"address": address, "password": password}, **extra)


@pytest.mark.embedded
def test_an_owner_signs_in_with_the_mailbox_password(client, alice):
    response = _login(client)
    assert response.status_code == 302 and response["Location"] == reverse("portal:home")
    page = client.get(reverse("portal:home"))
    assert page.status_code == 200
    assert b"alice@a.example" in page.content


def test_a_wrong_password_gets_one_generic_answer(client, alice):
    wrong = _login(client, password="nope")
    unknown = _login(client, address="nobody@a.example", password="nope")
    assert wrong.status_code == unknown.status_code == 401
    assert b"The address or password is wrong" in wrong.content
    assert client.get(reverse("portal:home")).status_code == 302


def test_an_app_password_does_not_open_the_portal(client, alice):
    _, secret = create_app_password(alice, "Phone")
    assert _login(client, password=secret).status_code == 401


def test_a_suspended_mailbox_cannot_sign_in(client, alice):
    Mailbox.objects.filter(pk=alice.pk).update(state=Mailbox.State.SUSPENDED)
    assert _login(client).status_code == 401


def test_an_app_password_only_domain_still_reaches_the_portal(client, alice, domain_a):
    # The owner must be able to come and create the app passwords SMTP now requires.
    domain_a.require_app_passwords = True
    domain_a.save()
    assert _login(client).status_code == 302


def test_suspending_ends_an_open_portal_session(client, alice):
    _login(client)
    Mailbox.objects.filter(pk=alice.pk).update(state=Mailbox.State.SUSPENDED)
    assert client.get(reverse("portal:home")).status_code == 302


def test_the_next_parameter_cannot_leave_the_site(client, alice):
    response = client.post(
        reverse("portal:login"), {"address": "alice@a.example", "password": PASSWORD, "next": "https://evil.example/"}
    )
    assert response["Location"] == reverse("portal:home")


def test_a_staff_session_is_not_a_portal_session(super_client, db):
    assert super_client.get(reverse("portal:home")).status_code == 302


def test_a_portal_session_is_not_a_staff_session(client, alice):
    _login(client)
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# --- rate limit --------------------------------------------------------------------------


def test_the_address_is_locked_out_after_repeated_failures(client, alice, settings):
    for _ in range(settings.PORTAL_LOGIN_LIMIT_PER_ADDRESS):
        assert _login(client, password="wrong").status_code == 401
    # Even the right password is now refused, without being checked.
    response = _login(client)
    assert response.status_code == 429
    assert b"Too many failed sign-ins" in response.content


def test_the_ip_is_limited_across_addresses(client, alice, domain_a, settings):
    settings.PORTAL_LOGIN_LIMIT_PER_IP = 3
    for n in range(3):
        _login(client, address=f"guess{n}@a.example", password="wrong")
    assert _login(client).status_code == 429


def test_another_ip_is_not_locked_out_by_the_address_limit_of_nobody(client, alice, settings):
    settings.PORTAL_LOGIN_LIMIT_PER_IP = 3
    for _ in range(3):
        _login(client, password="wrong", REMOTE_ADDR="192.0.2.10")
    assert _login(client, REMOTE_ADDR="192.0.2.11").status_code == 302


def test_a_success_on_one_address_does_not_reset_the_ip_counter(client, alice, domain_a, settings):
    make_mailbox(domain_a, "mallory")
    settings.PORTAL_LOGIN_LIMIT_PER_IP = 3
    _login(client, address="victim@a.example", password="guess1")
    _login(client, address="victim@a.example", password="guess2")
    # The attacker signs in to their own mailbox from the same IP...
    assert _login(client, address="mallory@a.example").status_code == 302
    client.post(reverse("portal:logout"))
    _login(client, address="victim@a.example", password="guess3")
    # ...which did not buy more guesses.
    assert _login(client, address="victim@a.example", password="guess4").status_code == 429


def test_a_success_clears_the_address_counter(client, alice, settings):
    for _ in range(settings.PORTAL_LOGIN_LIMIT_PER_ADDRESS - 1):
        _login(client, password="wrong")
    assert _login(client).status_code == 302
    client.post(reverse("portal:logout"))
    for _ in range(settings.PORTAL_LOGIN_LIMIT_PER_ADDRESS - 1):
        assert _login(client, password="wrong").status_code == 401


# --- TOTP --------------------------------------------------------------------------------


def _totp_now(secret):
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time

    counter = next(iter(yield_hotp_counters_from_time()))
    return format_hotp_value(hotp_value(secret, counter))


def test_an_owner_with_totp_needs_the_code(client, alice):
    from allauth.mfa.totp.internal.auth import generate_totp_secret

    secret = generate_totp_secret()
    owner = OwnerSettings(mailbox=alice)
    owner.totp_key = secret
    owner.save()
    response = _login(client)
    assert response["Location"].startswith(reverse("portal:login_totp"))
    assert client.get(reverse("portal:home")).status_code == 302  # not signed in yet
    assert client.post(reverse("portal:login_totp"), {"code": "000000"}).status_code == 401
    code = _totp_now(secret)
    assert client.post(reverse("portal:login_totp"), {"code": code}).status_code == 302
    assert client.get(reverse("portal:home")).status_code == 200
    # The same code cannot be used for a second sign-in.
    client.post(reverse("portal:logout"))
    _login(client)
    assert client.post(reverse("portal:login_totp"), {"code": code}).status_code == 401


def test_totp_can_be_turned_on_from_the_portal(client, alice):
    _login(client)
    page = client.get(reverse("portal:totp_setup"))
    secret = page.context["secret"]
    assert b"<svg" in page.content
    response = client.post(reverse("portal:totp_setup"), {"code": _totp_now(secret)})
    assert response.status_code == 302
    stored = OwnerSettings.objects.get(mailbox=alice)
    assert stored.totp_key == secret
    assert secret not in stored.totp_secret  # sealed at rest


# --- events --------------------------------------------------------------------------------


@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="reads the Redis broker's queue")
def test_every_sign_in_is_published_as_a_web_event_without_the_password(client, alice):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("ingest")
    _login(client, password="wrong-password-123")
    _login(client)
    assert portal_events.flush()
    messages = [json.loads(raw) for raw in broker.lrange("ingest", 0, -1)]
    broker.delete("ingest")
    assert all(m["headers"]["task"] == "monitoring.ingest_auth_events" for m in messages)
    # Body: base64 of [args, kwargs, embed]; args = [[event]].
    events = [json.loads(base64.b64decode(m["body"]))[0][0][0] for m in messages]
    assert sorted(e["result"] for e in events) == ["bad_credentials", "success"]
    assert {e["listener"] for e in events} == {"web"}
    assert {e["username"] for e in events} == {"alice@a.example"}
    dumped = json.dumps(messages)
    assert "wrong-password-123" not in dumped and PASSWORD not in dumped


def test_a_broker_outage_never_blocks_a_sign_in(client, alice, caplog):
    from mailadmin.celery import app

    # Point publishing at a port where nothing listens; the pools of the real
    # broker are left alone (other tests publish through them).
    original = app.conf.broker_write_url
    app.amqp._producer_pool = None
    app.conf.broker_write_url = "redis://127.0.0.1:1/0"
    try:
        started = time.monotonic()
        response = _login(client)
        elapsed = time.monotonic() - started
        assert portal_events.flush(30)
    finally:
        app.conf.broker_write_url = original
        app.amqp._producer_pool = None
    assert response.status_code == 302
    assert "portal sign-in event not queued" in caplog.text
    assert elapsed < 2  # the request never waited for the broker
