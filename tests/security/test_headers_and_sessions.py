"""Security headers and cookies on real responses: CSP everywhere, HSTS and Secure
cookies when SITE_URL is https, HttpOnly/SameSite cookies, staff session expiry."""

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role
from tests.conftest import add_totp

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "headers-Password-correct-7"
EXPECTED_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}


def parse_csp(header):
    directives = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition(" ")
        directives[name] = value.strip()
    return directives


@pytest.fixture(autouse=True)
def _fresh_cache(db):
    cache.clear()  # allauth's login rate limits and used TOTP codes
    yield
    cache.clear()


def sign_in(client, email, password, totp_secret):
    """The real two-step login, so the session cookie is the one a browser gets."""
    response = client.post(reverse("account_login"), {"login": email, "password": password})
    assert response["Location"] == reverse("mfa_authenticate")
    code = format_hotp_value(hotp_value(totp_secret, int(time.time()) // 30))
    response = client.post(reverse("mfa_authenticate"), {"code": code})
    assert response.status_code == 302 and response["Location"] == reverse("dashboard")
    return response


@pytest.fixture
def staff_login(db):
    user, _ = create_staff("headers@staff.example", role=Role.SUPERADMIN, password=PASSWORD)
    return user, add_totp(user)


@pytest.mark.embedded
@pytest.mark.parametrize("name", ["account_login", "account_reset_password"])
def test_public_pages_carry_the_strict_csp(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 200
    assert parse_csp(response["Content-Security-Policy"]) == EXPECTED_CSP
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    # No inline script in what we render (JSON data blocks are not executed by browsers).
    html = response.content.decode()
    assert "<script>" not in html and " onclick=" not in html and ' style="' not in html


def test_signed_in_pages_and_errors_carry_the_csp(super_client):
    for path in [reverse("dashboard"), reverse("accounts:domain_list"), reverse("mfa_index"), "/no-such-page/"]:
        response = super_client.get(path)
        assert response.status_code in (200, 404), path
        assert parse_csp(response["Content-Security-Policy"]) == EXPECTED_CSP, path


def test_session_and_csrf_cookies_are_httponly_samesite_and_end_with_the_browser(client, staff_login):
    user, secret = staff_login
    sign_in(client, user.email, PASSWORD, secret)
    session_cookie = client.cookies["sessionid"]
    assert session_cookie["httponly"] and session_cookie["samesite"] == "Lax"
    # Expire at browser close: no Max-Age/Expires on the cookie...
    assert session_cookie["max-age"] == "" and session_cookie["expires"] == ""
    csrf_cookie = client.cookies["csrftoken"]
    assert csrf_cookie["httponly"] and csrf_cookie["samesite"] == "Lax"
    # ...and on the server the session still ends SESSION_COOKIE_AGE after sign-in.
    session = Session.objects.get(session_key=session_cookie.value)
    lifetime = session.expire_date - timezone.now()
    assert timedelta(hours=7, minutes=59) < lifetime <= timedelta(hours=8)


def test_an_expired_staff_session_is_signed_out(client, staff_login):
    user, secret = staff_login
    sign_in(client, user.email, PASSWORD, secret)
    assert client.get(reverse("dashboard")).status_code == 200
    Session.objects.filter(session_key=client.cookies["sessionid"].value).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))


def test_hsts_on_secure_requests_when_configured(settings, db):
    settings.SECURE_HSTS_SECONDS = 31536000
    client = Client()  # a new handler reads the changed settings
    assert client.get(reverse("account_login"), secure=True)["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in client.get(reverse("account_login"))  # never over plain HTTP


def _settings_in_a_new_process(env_changes):
    """Import settings fresh with SITE_URL etc. changed: they are derived at start-up."""
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({k: getattr(s, k) for k in ['SECURE_HSTS_SECONDS', 'SESSION_COOKIE_SECURE', "
        "'CSRF_COOKIE_SECURE', 'SESSION_COOKIE_HTTPONLY', 'SESSION_EXPIRE_AT_BROWSER_CLOSE', "
        "'ACCOUNT_REAUTHENTICATION_TIMEOUT', 'SESSION_COOKIE_AGE']}))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "mailadmin.settings", **env_changes}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_https_site_url_turns_on_hsts_and_secure_cookies():
    https = _settings_in_a_new_process({"SITE_URL": "https://mailadmin.example.org"})
    assert https["SECURE_HSTS_SECONDS"] == 31536000
    assert https["SESSION_COOKIE_SECURE"] and https["CSRF_COOKIE_SECURE"] and https["SESSION_COOKIE_HTTPONLY"]
    plain = _settings_in_a_new_process({"SITE_URL": "http://127.0.0.1:8000"})
    assert plain["SECURE_HSTS_SECONDS"] == 0 and not plain["SESSION_COOKIE_SECURE"]


def test_session_settings_come_from_the_environment():
    values = _settings_in_a_new_process(
        {"SESSION_EXPIRE_AT_BROWSER_CLOSE": "0", "REAUTHENTICATION_TIMEOUT": "120", "SESSION_COOKIE_AGE": "3600"}
    )
    assert values["SESSION_EXPIRE_AT_BROWSER_CLOSE"] is False
    assert values["ACCOUNT_REAUTHENTICATION_TIMEOUT"] == 120 and values["SESSION_COOKIE_AGE"] == 3600
