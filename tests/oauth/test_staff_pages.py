import pytest
from django.contrib.auth.hashers import check_password
from django.urls import reverse

from mailadmin.oauth.models import AccessToken, Application
from mailadmin.oauth.tokens import check_bearer
from mailadmin.staff.models import AuditEntry
from tests.oauth.helpers import REDIRECT_URI, issue_token, make_application, make_mailbox


@pytest.fixture
def tokens(domain_a, domain_b):
    app = make_application()
    alice = make_mailbox(domain_a, "alice")
    bob = make_mailbox(domain_b, "bob")
    return {"app": app, "a": issue_token(alice, app), "b": issue_token(bob, app)}


@pytest.mark.embedded
def test_superadmin_creates_a_confidential_application_and_sees_the_secret_once(super_client):
    response = super_client.post(
        reverse("oauth:application_create"),
        {"name": "Webmail", "client_type": "confidential", "redirect_uris": REDIRECT_URI, "domain": ""},
    )
    assert response.status_code == 200
    secret = response.context["secret"]
    app = Application.objects.get(name="Webmail")
    assert app.client_secret != secret and check_password(secret, app.client_secret)
    assert app.authorization_grant_type == Application.GRANT_AUTHORIZATION_CODE
    entry = AuditEntry.objects.get(object_kind="application", action="create")
    assert secret not in str(entry.changes)
    assert secret.encode() not in super_client.get(reverse("oauth:application_detail", args=[app.pk])).content


def test_rotating_the_secret_replaces_it(super_client):
    app = make_application(client_type=Application.CLIENT_CONFIDENTIAL, secret="old-secret-" * 4)
    response = super_client.post(reverse("oauth:application_rotate_secret", args=[app.pk]))
    new = response.context["secret"]
    app.refresh_from_db()
    assert check_password(new, app.client_secret) and not check_password("old-secret-" * 4, app.client_secret)
    assert AuditEntry.objects.get(action="update", object_kind="application").changes == {
        "client_secret": [None, "(changed)"]
    }


def test_disabling_an_application_stops_its_tokens(super_client, tokens):
    _, raw = tokens["a"]
    super_client.post(reverse("oauth:application_toggle", args=[tokens["app"].pk]))
    assert not Application.objects.get(pk=tokens["app"].pk).is_enabled
    assert check_bearer(raw, "alice@a.example").detail == "app_disabled"
    assert AuditEntry.objects.filter(object_kind="application", changes__is_enabled=[True, False]).exists()


def test_a_domain_admin_may_create_only_for_their_domains(client_a, domain_a, domain_b):
    url = reverse("oauth:application_create")
    data = {"name": "A app", "client_type": "public", "redirect_uris": REDIRECT_URI}
    assert client_a.post(url, {**data, "domain": ""}).status_code == 200  # form error: domain required
    assert client_a.post(url, {**data, "domain": domain_b.pk}).context["form"].errors
    assert not Application.objects.exists()
    client_a.post(url, {**data, "domain": domain_a.pk})
    assert Application.objects.get().domain == domain_a


def test_a_domain_admin_cannot_change_a_global_application(client_a, tokens):
    assert client_a.post(reverse("oauth:application_toggle", args=[tokens["app"].pk])).status_code == 403


def test_redirect_uris_must_be_https_or_loopback(super_client):
    response = super_client.post(
        reverse("oauth:application_create"),
        {"name": "X", "client_type": "public", "redirect_uris": "http://example.com/cb"},
    )
    assert "loopback" in str(response.context["form"].errors)


def test_tokens_are_listed_per_scope(client_a, tokens):
    page = client_a.get(reverse("oauth:token_list"))
    assert b"alice@a.example" in page.content and b"bob@b.example" not in page.content


def test_a_domain_admin_revokes_a_token_of_their_domain_only(client_a, tokens):
    (row_a, raw_a), (row_b, raw_b) = tokens["a"], tokens["b"]
    assert client_a.post(reverse("oauth:token_revoke", args=[row_b.pk])).status_code == 404
    assert check_bearer(raw_b, "bob@b.example").ok
    assert client_a.post(reverse("oauth:token_revoke", args=[row_a.pk])).status_code == 302
    assert not check_bearer(raw_a, "alice@a.example").ok
    assert AuditEntry.objects.filter(object_kind="oauth_token", action="delete", domain_name="a.example").exists()


def test_an_auditor_reads_but_cannot_revoke(auditor_client, tokens):
    row, raw = tokens["a"]
    assert auditor_client.get(reverse("oauth:token_list")).status_code == 200
    assert auditor_client.post(reverse("oauth:token_revoke", args=[row.pk])).status_code == 403
    assert AccessToken.objects.filter(pk=row.pk).exists()


def test_introspection_is_scoped_to_the_staff_users_domains(client_a, tokens):
    url = reverse("oauth:introspect")
    mine = client_a.post(url, {"token": tokens["a"][1]}).json()
    assert mine["active"] is True and mine["username"] == "alice@a.example" and mine["scope"] == "smtp"
    assert client_a.post(url, {"token": tokens["b"][1]}).json() == {"active": False}
    assert client_a.post(url, {"token": "nonsense"}).json() == {"active": False}


def test_introspection_needs_a_staff_login(client, tokens):
    response = client.post(reverse("oauth:introspect"), {"token": tokens["a"][1]})
    assert response.status_code == 302
