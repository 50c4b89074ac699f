"""Shared fixtures: two domains and three staff users (superadmin, admin of A,
admin of B) so every view gets its permission test; clients already past MFA."""

import time

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

from mailadmin.accounts.models import Domain
from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role


@pytest.fixture(autouse=True)
def _fast_staff_password_hashing(settings):
    """Staff fixtures hash with a cheap hasher: Django's full-strength Argon2 made
    fixture set-up dominate the suite. SMTP credentials name their own hasher
    explicitly, so the accounts tests still exercise Argon2id."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *settings.PASSWORD_HASHERS]


def add_totp(user):
    """Give a staff user a TOTP authenticator; returns the base32 secret."""
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    return secret


@pytest.fixture
def domain_a(db):
    return Domain.objects.create(name="a.example")


@pytest.fixture
def domain_b(db):
    return Domain.objects.create(name="b.example")


@pytest.fixture
def superadmin(db):
    user, _ = create_staff("root@staff.example", role=Role.SUPERADMIN)
    add_totp(user)
    return user


@pytest.fixture
def admin_a(db, domain_a):
    user, _ = create_staff("admin-a@staff.example", role=Role.DOMAIN_ADMIN, domains=[domain_a])
    add_totp(user)
    return user


@pytest.fixture
def admin_b(db, domain_b):
    user, _ = create_staff("admin-b@staff.example", role=Role.DOMAIN_ADMIN, domains=[domain_b])
    add_totp(user)
    return user


@pytest.fixture
def auditor(db):
    user, _ = create_staff("auditor@staff.example", role=Role.AUDITOR)
    user.all_domains = True
    user.save()
    add_totp(user)
    return user


def _client_for(client, user):
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    # As if the password was just re-entered, so actions behind re-authentication
    # (mailadmin.security) go through; tests/security tests that gate with a bare client.
    session = client.session
    session["account_authentication_methods"] = [{"method": "password", "at": time.time(), "reauthenticated": True}]
    session["account_authentication_methods_user"] = str(user.pk)
    session.save()
    return client


@pytest.fixture
def super_client(client, superadmin):
    return _client_for(client, superadmin)


@pytest.fixture
def client_a(client, admin_a):
    return _client_for(client, admin_a)


@pytest.fixture
def client_b(client, admin_b):
    return _client_for(client, admin_b)


@pytest.fixture
def auditor_client(client, auditor):
    return _client_for(client, auditor)
