"""allauth's pages render in the site's Bootstrap look, without a sign-up link."""

import pytest
from django.urls import reverse


@pytest.mark.embedded
def test_login_page_is_styled_and_has_no_signup(client, db):
    response = client.get(reverse("account_login"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="form-control' in html and 'class="btn btn-primary"' in html
    assert "sign up" not in html.lower()


def test_mfa_and_password_pages_render(super_client):
    for name in ("mfa_index", "account_change_password", "account_reset_password"):
        response = super_client.get(reverse(name))
        assert response.status_code == 200, name
        assert b"btn btn-" in response.content, name
