"""Accounts fixtures: a fixed credential encryption key, fresh verifier caches,
and a mailbox factory that goes through the real create path."""

import pytest

from mailadmin.accounts import verify
from mailadmin.accounts.mailboxes import create_mailbox

TEST_FERNET_KEY = "hK0mRj2sVq3mIYl4o8w7bQxg9m0r3Zt7yJw2c4l5kVg="
GOOD_PASSWORD = "violet-anchor-Harbour-91-drift"


@pytest.fixture(autouse=True)
def _credential_settings(settings):
    settings.CREDENTIAL_ENCRYPTION_KEYS = [TEST_FERNET_KEY]
    verify.clear_caches()
    yield
    verify.clear_caches()


@pytest.fixture
def make_mailbox(db):
    def make(domain, local_part="alice", password=GOOD_PASSWORD, **kwargs):
        mailbox, _ = create_mailbox(domain, local_part, password=password, **kwargs)
        return mailbox

    return make


@pytest.fixture
def mailbox_a(make_mailbox, domain_a):
    return make_mailbox(domain_a, "alice")


@pytest.fixture
def mailbox_b(make_mailbox, domain_b):
    return make_mailbox(domain_b, "bob")
