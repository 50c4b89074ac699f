import pytest

from .conftest import ALICE, PASSWORD, smtp_client

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("listener", ["starttls", "tls"])
def test_it_authenticates_with_plain(smtpd_server, accounts, listener):
    client = smtp_client(smtpd_server, listener)
    client.user, client.password = ALICE, PASSWORD
    code, text = client.auth("PLAIN", client.auth_plain)
    assert (code, text) == (235, b"2.7.0 Authentication successful")
    client.quit()
