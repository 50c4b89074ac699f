"""With DEBUG off (as in production): clear pages, never a traceback."""

import pytest
from django.test import Client
from django.urls import include, path, reverse


def _boom(request):
    raise RuntimeError("secret internals that must not leak")


# This module doubles as a URLconf: the real one plus a view that crashes.
urlpatterns = [path("boom/", _boom), path("", include("mailadmin.urls"))]


@pytest.fixture(autouse=True)
def _debug_off(settings):
    settings.DEBUG = False


@pytest.mark.embedded
def test_unknown_url_gives_the_404_page(client_a):
    response = client_a.get("/no/such/page/")
    assert response.status_code == 404
    assert b"Page not found" in response.content and b"Traceback" not in response.content


def test_missing_object_gives_the_404_page(super_client, db):
    response = super_client.get(reverse("accounts:domain_detail", args=[987654]))
    assert response.status_code == 404 and b"Page not found" in response.content


def test_another_domains_object_gives_the_404_page(client_b, domain_a):
    response = client_b.get(reverse("accounts:domain_detail", args=[domain_a.pk]))
    assert response.status_code == 404 and b"Page not found" in response.content


def test_auditor_write_gives_the_403_page(auditor_client, domain_a):
    response = auditor_client.post(reverse("accounts:domain_edit", args=[domain_a.pk]), {"description": "x"})
    assert response.status_code == 403 and b"Not allowed" in response.content


@pytest.mark.urls(__name__)
def test_crash_gives_the_500_page(superadmin):
    client = Client(raise_request_exception=False)
    client.force_login(superadmin, backend="django.contrib.auth.backends.ModelBackend")
    response = client.get("/boom/")
    assert response.status_code == 500
    assert b"Something went wrong" in response.content
    assert b"secret internals" not in response.content and b"Traceback" not in response.content
