"""Sign-in through allauth's real views: password, then the TOTP step; MFA set-up
is forced; every step leaves an audit row with the client IP and no secret."""

import time

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import SECRET_SESSION_KEY, format_hotp_value, hotp_value
from django.core.cache import cache
from django.urls import reverse

from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import AuditEntry, Role
from tests.conftest import add_totp

PASSWORD = "correct-horse-battery-9"


def totp_code(secret, offset=0):
    return format_hotp_value(hotp_value(secret, int(time.time()) // 30 + offset))


@pytest.fixture(autouse=True)
def _fresh_rate_limits(db):
    # allauth keeps rate-limit counters and used TOTP codes in the shared cache.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def member(db, domain_a):
    user, _ = create_staff("member@staff.example", role=Role.DOMAIN_ADMIN, domains=[domain_a], password=PASSWORD)
    return user


def login_with_password(client, email, password=PASSWORD):
    return client.post(reverse("account_login"), {"login": email, "password": password})


def test_password_then_totp_signs_in_and_is_audited(client, member):
    secret = add_totp(member)
    response = login_with_password(client, "Member@Staff.example")
    assert response.status_code == 302 and response["Location"] == reverse("mfa_authenticate")
    # Between the two steps nothing else is reachable.
    assert client.get(reverse("dashboard")).status_code == 302
    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")
    assert client.get(reverse("dashboard")).status_code == 200
    entry = AuditEntry.objects.get(action="login")
    assert entry.actor == member and entry.client_ip == "127.0.0.1" and entry.object_kind == "user"


def test_wrong_totp_code_is_refused_and_audited(client, member):
    secret = add_totp(member)
    login_with_password(client, member.email)
    wrong = str((int(totp_code(secret)) + 1) % 1_000_000).zfill(6)
    response = client.post(reverse("mfa_authenticate"), {"code": wrong})
    assert response.status_code == 200 and response.context["form"].errors
    assert client.get(reverse("dashboard")).status_code == 302
    entry = AuditEntry.objects.get(action="login_failed")
    assert entry.actor == member and entry.changes == {"stage": [None, "mfa"]}
    assert not AuditEntry.objects.filter(action="login").exists()


def test_code_of_the_previous_step_is_accepted_once_and_older_ones_are_not(client, member):
    # A code typed just as its 30 s step ends must still work (MFA_TOTP_TOLERANCE = 1),
    # but only once, and a code two steps old is refused.
    secret = add_totp(member)
    if 30 - time.time() % 30 < 3:  # keep the whole test inside one step
        time.sleep(30 - time.time() % 30)
    login_with_password(client, member.email)
    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret, offset=-2)})
    assert response.status_code == 200 and response.context["form"].errors
    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret, offset=-1)})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")
    client.logout()
    login_with_password(client, member.email)
    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret, offset=-1)})
    assert response.status_code == 200 and response.context["form"].errors


def test_wrong_password_and_unknown_user_are_audited_without_the_password(client, member):
    login_with_password(client, member.email, "Wrong-password-123")
    login_with_password(client, "nobody@staff.example", "Other-password-456")
    known, unknown = AuditEntry.objects.filter(action="login_failed").order_by("id")
    assert known.actor == member and known.client_ip == "127.0.0.1"
    assert unknown.actor is None and unknown.actor_email == "nobody@staff.example"
    dump = str(list(AuditEntry.objects.values()))
    assert "Wrong-password" not in dump and "Other-password" not in dump


def test_failed_logins_are_rate_limited(client, member):
    add_totp(member)
    for _ in range(5):
        login_with_password(client, member.email, "Wrong-password-123")
    response = login_with_password(client, member.email)  # right password, too late
    assert response.status_code != 302 or response["Location"] != reverse("mfa_authenticate")
    assert b"Too many" in response.content


def test_staff_without_authenticator_must_set_one_up_first(client, member, django_capture_on_commit_callbacks):
    response = login_with_password(client, member.email)
    assert response.status_code == 302
    for page in (reverse("dashboard"), reverse("accounts:domain_list"), reverse("staff:audit_log")):
        response = client.get(page)
        assert response.status_code == 302 and response["Location"].startswith(reverse("mfa_activate_totp"))
    # The real set-up page, right after a real password login: no re-authentication needed.
    assert client.get(reverse("mfa_activate_totp")).status_code == 200
    secret = client.session[SECRET_SESSION_KEY]
    with django_capture_on_commit_callbacks(execute=True):  # allauth signals after commit
        response = client.post(reverse("mfa_activate_totp"), {"code": totp_code(secret)})
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=member, type="totp").exists()
    assert client.get(reverse("dashboard")).status_code == 200
    entry = AuditEntry.objects.get(action="mfa_change", changes__authenticator=[None, "totp"])
    assert entry.actor == member and entry.object_kind == "authenticator"
    assert secret not in str(entry.changes)


def test_logout_and_password_change_are_audited(client, member):
    secret = add_totp(member)
    login_with_password(client, member.email)
    client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    new_password = "another-long-Passphrase-42"
    response = client.post(
        reverse("account_change_password"),
        {"oldpassword": PASSWORD, "password1": new_password, "password2": new_password},
    )
    assert response.status_code == 302
    client.post(reverse("account_logout"))
    actions = list(AuditEntry.objects.order_by("id").values_list("action", flat=True))
    assert actions == ["login", "password_change", "logout"]
    change = AuditEntry.objects.get(action="password_change")
    assert change.changes == {"password": [None, "(changed)"]}
    assert new_password not in str(list(AuditEntry.objects.values()))


def test_django_admin_is_open_to_superadmins(super_client):
    assert super_client.get("/django-admin/").status_code == 200


def test_django_admin_refuses_others(client_a):
    assert client_a.get("/django-admin/", follow=True).status_code == 403
    assert client_a.get("/django-admin/login/").status_code == 403


def test_django_admin_login_is_allauths(client, db):
    response = client.get("/django-admin/", follow=True)
    assert response.redirect_chain[-1][0].startswith(reverse("account_login"))
