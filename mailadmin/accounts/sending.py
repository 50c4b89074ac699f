"""What an authenticated mailbox may send, for the smtpd (keep this interface).

    sender_allowed(mailbox_id, "Alice@A.Example")  -> bool
    hourly_send_limit(mailbox_id)                  -> int

Both are synchronous (call them through the smtpd's thread pool) and read the
database every time, so a new alias or changed limit applies at once.
"""

from __future__ import annotations

from django.db.models.functions import Lower

from mailadmin.accounts.models import Alias, Mailbox
from mailadmin.accounts.verify import normalise_username


def sender_allowed(mailbox_id: int, address: str) -> bool:
    """True if `address` (MAIL FROM / From:) is the mailbox's own address or one of
    its aliases. The domain compares case-insensitively (and as an A-label); the
    local part compares case-insensitively too, like the uniqueness rule."""
    local, sep, domain = normalise_username(address or "").rpartition("@")
    if not sep or not local or not domain:
        return False
    local = local.lower()
    if Mailbox.objects.annotate(lp=Lower("local_part")).filter(pk=mailbox_id, domain__name=domain, lp=local).exists():
        return True
    return (
        Alias.objects.annotate(lp=Lower("local_part"))
        .filter(mailbox_id=mailbox_id, domain__name=domain, lp=local)
        .exists()
    )


def hourly_send_limit(mailbox_id: int) -> int:
    """The mailbox's own limit, else its domain's default; 0 for an unknown mailbox."""
    row = Mailbox.objects.filter(pk=mailbox_id).values_list("send_rate_per_hour", "domain__default_send_rate").first()
    if row is None:
        return 0
    own, default = row
    return own or default
