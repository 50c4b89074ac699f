"""The owner's portal session: separate from the staff login (a mailbox is never
a Django user), stored in the same Django session under its own keys.

The session carries a keyed hash of the mailbox's password hash, like Django's
session auth hash: a password change anywhere (staff, another browser) ends
every other portal session of that mailbox.
"""

import functools
import time
from urllib.parse import urlencode

from django.shortcuts import redirect
from django.urls import reverse
from django.utils.crypto import constant_time_compare, salted_hmac

MAILBOX_KEY = "portal_mailbox_id"
HASH_KEY = "portal_auth_hash"
PENDING_KEY = "portal_pending_totp"
# The password step is good for this long while the TOTP step is pending.
PENDING_SECONDS = 300


def _auth_hash(mailbox) -> str:
    return salted_hmac("mailadmin.portal.session", mailbox.password_hash, algorithm="sha256").hexdigest()


def sign_in(request, mailbox) -> None:
    request.session.pop(PENDING_KEY, None)
    request.session.cycle_key()  # no session fixation across the privilege change
    request.session[MAILBOX_KEY] = mailbox.pk
    request.session[HASH_KEY] = _auth_hash(mailbox)


def refresh(request, mailbox) -> None:
    """After the owner changed their own password: keep this session, end the others."""
    request.session[HASH_KEY] = _auth_hash(mailbox)


def sign_out(request) -> None:
    for key in (MAILBOX_KEY, HASH_KEY, PENDING_KEY):
        request.session.pop(key, None)
    request.session.cycle_key()


def begin_totp(request, mailbox) -> None:
    request.session[PENDING_KEY] = {"mailbox_id": mailbox.pk, "at": time.time(), "hash": _auth_hash(mailbox)}


def pending_mailbox(request):
    from mailadmin.accounts.models import Mailbox

    pending = request.session.get(PENDING_KEY)
    if not pending or time.time() - pending.get("at", 0) > PENDING_SECONDS:
        return None
    mailbox = Mailbox.objects.select_related("domain").filter(pk=pending["mailbox_id"]).first()
    if mailbox is None or not constant_time_compare(pending.get("hash", ""), _auth_hash(mailbox)):
        return None
    return mailbox


def current_mailbox(request):
    from mailadmin.accounts.models import Mailbox

    mailbox_id = request.session.get(MAILBOX_KEY)
    if mailbox_id is None:
        return None
    mailbox = Mailbox.objects.select_related("domain").filter(pk=mailbox_id).first()
    if (
        mailbox is None
        or not mailbox.is_active
        or not mailbox.domain.is_active
        or not constant_time_compare(request.session.get(HASH_KEY, ""), _auth_hash(mailbox))
    ):
        sign_out(request)
        return None
    return mailbox


def owner_required(view):
    """Like @login_required for mailbox owners: sets request.mailbox, the ONLY
    mailbox any portal query may be filtered by."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        mailbox = current_mailbox(request)
        if mailbox is None:
            query = urlencode({"next": request.get_full_path()})
            return redirect(f"{reverse('portal:login')}?{query}")
        request.mailbox = mailbox
        return view(request, *args, **kwargs)

    return wrapper
