"""The one bearer-token check the SMTP server uses for XOAUTH2 and OAUTHBEARER.

    check = check_bearer(token, username)   # sync; the smtpd runs it in a thread
    if check.ok: ...                        # check.mailbox_id, check.token_id

It never raises: a database error is a ``temp_failure``. It never logs or
returns the token. ``reason`` uses the auth-event result vocabulary (DESIGN
"Auth event"); ``detail`` says which check failed, for events and tests.
Revocation (RFC 7009, the portal, staff) deletes the access token row, so a
revoked token is simply unknown from the next AUTH on.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

logger = logging.getLogger(__name__)

# RFC 7628 leaves the size open; 12,288 octets covers real-world JWTs with room to spare.
MAX_TOKEN_OCTETS = 12288
# RFC 6750 b64token.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_LAST_USED_RESOLUTION = timedelta(minutes=1)

SUCCESS = "success"
BAD_CREDENTIALS = "bad_credentials"
DISABLED = "disabled"
MALFORMED = "malformed"
TEMP_FAILURE = "temp_failure"


@dataclass(frozen=True)
class TokenCheck:
    reason: str
    mailbox_id: int | None = None
    token_id: int | None = None
    # The token's mailbox address once the token is known (the event's username).
    username: str = ""
    # Which rule refused: unknown, expired, scope, wrong_user, wrong_audience,
    # app_disabled, mailbox_inactive, too_long, syntax, error ("" on success).
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == SUCCESS


def token_checksum(token: str) -> str:
    """The SHA-256 hex digest DOT stores instead of the token (token_checksum)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_well_formed(token) -> str:
    """ "" if the token may be looked up, else the detail of why not."""
    if not isinstance(token, str) or not token:
        return "syntax"
    if len(token.encode("utf-8")) > MAX_TOKEN_OCTETS:
        return "too_long"
    if not _B64TOKEN.fullmatch(token):
        return "syntax"
    return ""


def check_bearer(token: str, username: str) -> TokenCheck:
    """``username`` is the user named in the SASL exchange; "" (an OAUTHBEARER
    client that names nobody, RFC 7628 3.1) means the token's own mailbox."""
    problem = is_well_formed(token)
    if problem:
        return TokenCheck(MALFORMED, detail=problem)
    try:
        return _check(token, username or "")
    except Exception as exc:  # the caller is an SMTP session: answer 454, never crash it
        # The exception class only: a driver message could in theory quote parameters.
        logger.error("bearer token check failed: %s", type(exc).__name__)
        return TokenCheck(TEMP_FAILURE, detail="error")


def _same_address(named: str, address: str) -> bool:
    from mailadmin.accounts.verify import normalise_username

    try:
        return normalise_username(named).casefold() == normalise_username(address).casefold()
    except (ValueError, UnicodeError):
        return False


def _check(token: str, username: str) -> TokenCheck:
    from mailadmin.oauth.models import SMTP_SCOPE, AccessToken

    access = (
        AccessToken.objects.select_related("user__domain", "application")
        .filter(token_checksum=token_checksum(token))
        .first()
    )
    if access is None:
        return TokenCheck(BAD_CREDENTIALS, detail="unknown")
    mailbox = access.user
    if mailbox is None:  # a client-credentials token has no owner: never an SMTP login
        return TokenCheck(BAD_CREDENTIALS, token_id=access.pk, detail="wrong_user")
    if access.is_expired():
        return TokenCheck(BAD_CREDENTIALS, token_id=access.pk, detail="expired")
    if not access.allow_scopes([SMTP_SCOPE]):
        return TokenCheck(BAD_CREDENTIALS, token_id=access.pk, detail="scope")
    if access.resource and settings.OAUTH_SMTP_RESOURCE not in access.resource:
        return TokenCheck(BAD_CREDENTIALS, token_id=access.pk, detail="wrong_audience")
    if username and not _same_address(username, mailbox.address):
        return TokenCheck(BAD_CREDENTIALS, token_id=access.pk, detail="wrong_user")
    owner = {"mailbox_id": mailbox.pk, "token_id": access.pk, "username": mailbox.address}
    if access.application is None or not access.application.allows_mailbox(mailbox):
        return TokenCheck(BAD_CREDENTIALS, detail="app_disabled", **owner)
    if not (mailbox.is_active and mailbox.domain.is_active):
        return TokenCheck(DISABLED, detail="mailbox_inactive", **owner)
    _touch(access)
    return TokenCheck(SUCCESS, **owner)


def _touch(access) -> None:
    """Record last use at minute resolution: one small UPDATE, not one per AUTH."""
    from mailadmin.oauth.models import AccessToken

    now = timezone.now()
    if access.last_used is None or now - access.last_used >= _LAST_USED_RESOLUTION:
        AccessToken.objects.filter(pk=access.pk).update(last_used=now)
