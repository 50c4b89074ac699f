"""The owner's pages, and isolation: owner A reaches nothing of B's by any URL."""

import datetime as dt
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from mailadmin.accounts.credentials import create_app_password
from mailadmin.accounts.models import AppPassword
from mailadmin.accounts.verify import verify_password
from mailadmin.monitoring.models import AuthEvent
from mailadmin.oauth.models import AccessToken
from mailadmin.oauth.tokens import check_bearer
from mailadmin.staff.models import AuditEntry
from tests.oauth.helpers import PASSWORD, issue_token, make_application, make_mailbox


@pytest.fixture
def alice(domain_a):
    return make_mailbox(domain_a, "alice")


@pytest.fixture
def bob(domain_b):
    return make_mailbox(domain_b, "bob")


@pytest.fixture
def alice_client(client, alice):
    response = client.post(reverse("portal:login"), {"address": "alice@a.example", "password": PASSWORD})
    assert response.status_code == 302
    return client


def _event(username, ip="198.51.100.7", result="success"):
    return AuthEvent.objects.create(
        event_id=uuid.uuid4(),
        ts=timezone.now() - dt.timedelta(minutes=5),
        client_ip=ip,
        prefix=ip.rsplit(".", 1)[0] + ".0/24",
        listener=587,
        mechanism="PLAIN",
        username=username,
        domain_name=username.split("@")[1],
        result=result,
    )


def test_history_shows_only_the_owners_events(alice_client, bob):
    _event("alice@a.example", ip="198.51.100.7")
    _event("bob@b.example", ip="203.0.113.99")
    page = alice_client.get(reverse("portal:home"))
    assert b"198.51.100.7" in page.content
    assert b"203.0.113.99" not in page.content


def test_an_app_password_is_created_shown_once_and_works(alice_client, alice):
    response = alice_client.post(reverse("portal:app_passwords"), {"name": "Phone"})
    secret = response.context["new_secret"]
    assert secret and secret.encode() in response.content
    assert "no-store" in response["Cache-Control"]
    assert verify_password("alice@a.example", secret).ok
    again = alice_client.get(reverse("portal:app_passwords"))
    assert secret.encode() not in again.content and b"Phone" in again.content
    assert AuditEntry.objects.filter(object_kind="apppassword", actor_email="owner alice@a.example").exists()


def test_an_app_password_is_revoked(alice_client, alice):
    app, secret = create_app_password(alice, "Laptop")
    response = alice_client.post(reverse("portal:app_password_revoke", args=[app.pk]))
    assert response.status_code == 302
    assert not verify_password("alice@a.example", secret).ok


def test_the_password_is_changed_under_the_domains_policy(alice_client, alice, client):
    url = reverse("portal:password")
    weak = alice_client.post(url, {"current": PASSWORD, "new": "password", "confirm": "password"})
    assert weak.status_code == 200 and b"too short" in weak.content
    wrong = alice_client.post(url, {"current": "nope", "new": "x" * 20, "confirm": "x" * 20})
    assert b"current password is wrong" in wrong.content
    new = "Quartz-violin-87-meadow-lantern"
    ok = alice_client.post(url, {"current": PASSWORD, "new": new, "confirm": new})
    assert ok.status_code == 302
    assert verify_password("alice@a.example", new).ok
    assert alice_client.get(reverse("portal:home")).status_code == 200  # this session stays


def test_a_password_change_elsewhere_ends_the_portal_session(alice_client, alice):
    from mailadmin.accounts.credentials import set_password

    set_password(alice, "Another-long-passphrase-9931", enforce_policy=False)
    assert alice_client.get(reverse("portal:home")).status_code == 302


def test_grants_are_listed_and_revoked(alice_client, alice):
    app = make_application(name="Mailer")
    _, raw = issue_token(alice, app)
    page = alice_client.get(reverse("portal:grants"))
    assert b"Mailer" in page.content
    response = alice_client.post(reverse("portal:grant_revoke", args=[app.pk]))
    assert response.status_code == 302
    assert not check_bearer(raw, "alice@a.example").ok


def test_notice_preference_is_saved(alice_client, alice):
    alice_client.post(reverse("portal:preferences"), {})
    assert alice.owner_settings.notify_new_signin is False
    alice_client.post(reverse("portal:preferences"), {"notify_new_signin": "on"})
    alice.owner_settings.refresh_from_db()
    assert alice.owner_settings.notify_new_signin is True


# --- isolation by URL tampering ---------------------------------------------------------


def test_owner_cannot_revoke_anothers_app_password(alice_client, bob):
    app, secret = create_app_password(bob, "Bob's phone")
    response = alice_client.post(reverse("portal:app_password_revoke", args=[app.pk]))
    assert response.status_code == 404
    assert AppPassword.objects.get(pk=app.pk).revoked_at is None
    assert verify_password("bob@b.example", secret).ok


def test_owner_cannot_see_anothers_app_passwords(alice_client, bob):
    create_app_password(bob, "Bob's secret phone")
    page = alice_client.get(reverse("portal:app_passwords"))
    assert b"Bob&#x27;s secret phone" not in page.content and b"Bob's secret phone" not in page.content


def test_owner_cannot_see_or_revoke_anothers_grants(alice_client, bob):
    app = make_application(name="Bob's mailer")
    _, raw = issue_token(bob, app)
    page = alice_client.get(reverse("portal:grants"))
    assert b"mailer" not in page.content
    response = alice_client.post(reverse("portal:grant_revoke", args=[app.pk]))
    assert response.status_code == 404
    assert AccessToken.objects.filter(user=bob).count() == 1
    assert check_bearer(raw, "bob@b.example").ok


def test_owner_urls_take_no_mailbox_parameter(alice_client, bob):
    # There is no URL that names a mailbox: query strings are ignored.
    _event("bob@b.example", ip="203.0.113.99")
    for name in ("portal:home", "portal:app_passwords", "portal:grants", "portal:preferences"):
        page = alice_client.get(reverse(name), {"mailbox": bob.pk, "mailbox_id": bob.pk, "address": "bob@b.example"})
        assert page.status_code == 200
        assert b"bob@b.example" not in page.content and b"203.0.113.99" not in page.content


def test_the_session_cannot_be_pointed_at_another_mailbox(alice_client, bob):
    session = alice_client.session
    session["portal_mailbox_id"] = bob.pk  # the auth hash no longer matches
    session.save()
    assert alice_client.get(reverse("portal:home")).status_code == 302


def test_anonymous_visitors_are_sent_to_the_portal_login(client, db):
    for name in ("portal:home", "portal:app_passwords", "portal:grants", "portal:password", "portal:preferences"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response["Location"].startswith(reverse("portal:login"))


def test_the_notice_choice_is_readable_by_the_notifier(alice_client, alice):
    from mailadmin.portal.notices import wants_new_signin_notice

    assert wants_new_signin_notice(alice.pk) is True  # default on
    alice_client.post(reverse("portal:preferences"), {})
    assert wants_new_signin_notice(alice.pk) is False
