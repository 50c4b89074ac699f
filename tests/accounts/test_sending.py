import pytest

from mailadmin.accounts.mailboxes import add_alias
from mailadmin.accounts.sending import hourly_send_limit, sender_allowed


@pytest.mark.embedded
def test_sender_allowed_own_address_and_aliases(mailbox_a, mailbox_b):
    add_alias(mailbox_a, "sales")
    assert sender_allowed(mailbox_a.pk, "alice@a.example")
    assert sender_allowed(mailbox_a.pk, "Alice@A.EXAMPLE.")
    assert sender_allowed(mailbox_a.pk, "SALES@a.example")
    assert not sender_allowed(mailbox_a.pk, "bob@b.example")
    assert not sender_allowed(mailbox_b.pk, "sales@a.example")
    assert not sender_allowed(mailbox_a.pk, "")
    assert not sender_allowed(mailbox_a.pk, "alice")


def test_hourly_send_limit(mailbox_a, domain_a):
    assert hourly_send_limit(mailbox_a.pk) == domain_a.default_send_rate
    mailbox_a.send_rate_per_hour = 17
    mailbox_a.save()
    assert hourly_send_limit(mailbox_a.pk) == 17
    assert hourly_send_limit(999999) == 0
