"""Sensitive actions need a credential entered in the last few minutes: a signed-in
superadmin who has not re-authenticated is sent to allauth's reauthentication page,
nothing changes, and after entering the password the suspended POST is replayed."""

import time
from urllib.parse import quote

import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from mailadmin.accounts.models import Domain
from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import AuditEntry, Role
from tests.conftest import add_totp

PASSWORD = "reauth-Password-correct-3"


@pytest.fixture(autouse=True)
def _fresh_cache(db):
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def root(db):
    user, _ = create_staff("reauth-root@staff.example", role=Role.SUPERADMIN, password=PASSWORD)
    add_totp(user)
    return user


@pytest.fixture
def signed_in(root):
    """Signed in (past MFA) but not recently re-authenticated."""
    client = Client()
    client.force_login(root, backend="django.contrib.auth.backends.ModelBackend")
    return client


def reauthenticate(client, next_url, password=PASSWORD):
    return client.post(f"{reverse('account_reauthenticate')}?next={next_url}", {"password": password})


def assert_sent_to_reauthenticate(response, next_url):
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_reauthenticate"))
    assert f"next={quote(next_url, safe='')}" in response["Location"]


def test_role_change_asks_for_the_password_then_applies(signed_in, admin_a, domain_a):
    edit = reverse("staff:staff_edit", args=[admin_a.pk])
    data = {"full_name": "", "role": "auditor", "domains": [domain_a.pk], "all_domains": ""}
    assert signed_in.get(edit).status_code == 200  # looking is not sensitive
    assert_sent_to_reauthenticate(signed_in.post(edit, data), edit)
    admin_a.refresh_from_db()
    assert admin_a.role == Role.DOMAIN_ADMIN and not AuditEntry.objects.filter(action="role_change").exists()

    # A wrong password changes nothing.
    assert reauthenticate(signed_in, edit, "wrong-password-0000").status_code == 200
    admin_a.refresh_from_db()
    assert admin_a.role == Role.DOMAIN_ADMIN

    # The right one replays the suspended POST: the change is applied and audited.
    response = reauthenticate(signed_in, edit)
    assert response.status_code == 302 and response["Location"] == reverse("staff:staff_list")
    admin_a.refresh_from_db()
    assert admin_a.role == Role.AUDITOR
    assert AuditEntry.objects.filter(action="role_change", object_id=str(admin_a.pk)).exists()
    # Within the timeout a second change goes straight through.
    data["role"] = "domain_admin"
    assert signed_in.post(edit, data)["Location"] == reverse("staff:staff_list")


def test_name_only_edit_needs_no_reauthentication(signed_in, admin_a, domain_a):
    edit = reverse("staff:staff_edit", args=[admin_a.pk])
    data = {"full_name": "Ada", "role": "domain_admin", "domains": [domain_a.pk], "all_domains": ""}
    assert signed_in.post(edit, data)["Location"] == reverse("staff:staff_list")
    admin_a.refresh_from_db()
    assert admin_a.full_name == "Ada"


@pytest.mark.parametrize("action", ["staff_create", "staff_deactivate"])
def test_creating_and_deactivating_staff_need_reauthentication(signed_in, admin_a, action):
    if action == "staff_create":
        url, data = reverse("staff:staff_create"), {"email": "new@staff.example", "role": "auditor"}
    else:
        url, data = reverse("staff:staff_deactivate", args=[admin_a.pk]), {}
    assert_sent_to_reauthenticate(signed_in.post(url, data), url)
    admin_a.refresh_from_db()
    assert admin_a.is_active and not admin_a.__class__.objects.filter(email="new@staff.example").exists()


def test_reauthentication_expires(signed_in, admin_a, settings):
    reauthenticate(signed_in, reverse("dashboard"))
    session = signed_in.session
    records = session["account_authentication_methods"]
    records[-1]["at"] = time.time() - settings.ACCOUNT_REAUTHENTICATION_TIMEOUT - 1
    session["account_authentication_methods"] = records
    session.save()
    url = reverse("staff:staff_deactivate", args=[admin_a.pk])
    assert_sent_to_reauthenticate(signed_in.post(url), url)


def test_enabling_cram_md5_asks_for_the_password(signed_in, domain_a):
    edit = reverse("accounts:domain_edit", args=[domain_a.pk])
    data = {"description": "x", "max_mailboxes": 0, "default_send_rate": 200, "cram_md5_enabled": "on"}
    assert_sent_to_reauthenticate(signed_in.post(edit, data), edit)
    domain_a.refresh_from_db()
    assert not domain_a.cram_md5_enabled
    reauthenticate(signed_in, edit)
    domain_a.refresh_from_db()
    assert domain_a.cram_md5_enabled


def test_other_domain_edits_and_disabling_cram_need_no_reauthentication(signed_in, domain_a):
    Domain.objects.filter(pk=domain_a.pk).update(cram_md5_enabled=True)
    edit = reverse("accounts:domain_edit", args=[domain_a.pk])
    keep = {"description": "kept on", "max_mailboxes": 0, "default_send_rate": 200, "cram_md5_enabled": "on"}
    assert signed_in.post(edit, keep).status_code == 302
    off = {"description": "now off", "max_mailboxes": 0, "default_send_rate": 200}
    assert signed_in.post(edit, off)["Location"] == domain_a.get_absolute_url()
    domain_a.refresh_from_db()
    assert domain_a.description == "now off" and not domain_a.cram_md5_enabled


def test_creating_a_domain_with_cram_md5_asks_for_the_password(signed_in):
    url = reverse("accounts:domain_create")
    data = {"name": "cram.example", "max_mailboxes": 0, "default_send_rate": 200, "cram_md5_enabled": "on"}
    assert_sent_to_reauthenticate(signed_in.post(url, data), url)
    assert not Domain.objects.filter(name="cram.example").exists()
    reauthenticate(signed_in, url)
    assert Domain.objects.get(name="cram.example").cram_md5_enabled


def test_rotating_an_oauth_client_secret_asks_for_the_password(signed_in):
    from django.contrib.auth.hashers import check_password

    from mailadmin.oauth.models import Application
    from tests.oauth.helpers import make_application

    app = make_application(client_type=Application.CLIENT_CONFIDENTIAL, secret="old-secret-" * 4)
    url = reverse("oauth:application_rotate_secret", args=[app.pk])
    assert_sent_to_reauthenticate(signed_in.post(url), url)
    app.refresh_from_db()
    assert check_password("old-secret-" * 4, app.client_secret)
    # After the password, the replayed POST shows the new secret once.
    response = reauthenticate(signed_in, url)
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    app.refresh_from_db()
    assert check_password(response.context["secret"], app.client_secret)
