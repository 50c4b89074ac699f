import pytest
from django.urls import reverse

from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role


@pytest.mark.embedded
def test_it_shows_real_domain_counts(super_client, domain_a, domain_b):
    response = super_client.get(reverse("dashboard"))
    assert response.status_code == 200
    assert b'data-testid="domain-count">2<' in response.content


def test_it_counts_only_visible_domains(client_a, domain_a, domain_b):
    response = client_a.get(reverse("dashboard"))
    assert b'data-testid="domain-count">1<' in response.content
    assert b"staff-count" not in response.content


def test_anonymous_is_sent_to_login(client, db):
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


@pytest.mark.embedded
def test_staff_without_mfa_is_sent_to_setup(client, db):
    user, _ = create_staff("nomfa@staff.example", role=Role.SUPERADMIN)
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    response = client.get(reverse("dashboard"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("mfa_activate_totp"))
    # The set-up page itself is reachable (allauth may first ask to re-enter the password).
    response = client.get(reverse("mfa_activate_totp"), follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0].startswith(reverse("account_reauthenticate"))
