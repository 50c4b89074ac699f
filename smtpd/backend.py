"""The synchronous work a session hands to the thread pool: blocks, credential
verification, sender rules, delivery. Each job starts by dropping database
connections that broke or aged out, so a database outage heals without a restart.

Nothing here hashes a password: verification belongs to mailadmin.accounts.verify.
"""

import logging
import threading
import time
from dataclasses import dataclass

from django.db import close_old_connections, connections

log = logging.getLogger("smtpd.backend")


@dataclass
class Outcome:
    """What the session needs to answer an AUTH: a verifier reason plus identity."""

    reason: str  # a mailadmin.accounts.verify.Reason value, or "blocked"
    username: str | None = None
    mailbox_id: int | None = None
    credential: str = "none"
    block_id: int | None = None


BLOCKED = "blocked"
TEMP_FAILURE = "temp_failure"


# Django's CONN_HEALTH_CHECKS pings the server (SELECT 1) on the first query after
# every close_old_connections(): on the AUTH hot path that doubled the database round
# trips. Each thread pings at most this often; a connection that broke in between
# fails its next query, which the caller answers 454 (verify.py drops the connection,
# Django's errors_occurred check drops it otherwise), and the next job reconnects.
HEALTH_CHECK_INTERVAL = 1.0
_thread = threading.local()


def _job(fn):
    def wrapper(*args, **kwargs):
        close_old_connections()
        now = time.monotonic()
        if now - getattr(_thread, "checked_at", -HEALTH_CHECK_INTERVAL) < HEALTH_CHECK_INTERVAL:
            connections["default"].health_check_done = True
        else:
            _thread.checked_at = now
        return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    return wrapper


def _blocked(client_ip: str, username: str | None) -> Outcome | None:
    from mailadmin.monitoring.blocks import check_source

    decision = check_source(client_ip, username)
    if decision.blocked and not decision.allowlisted:
        return Outcome(BLOCKED, username=username, block_id=decision.block_id)
    return None


@_job
def is_allowlisted(client_ip: str) -> bool:
    from mailadmin.monitoring.blocks import check_source

    return bool(check_source(client_ip, None).allowlisted)


def _password_outcome(client_ip: str, username: str, secret: str, mechanism: str, cache_only: bool):
    from mailadmin.accounts.verify import normalise_username, verify_password

    username = normalise_username(username)
    blocked = _blocked(client_ip, username)
    if blocked:
        return blocked
    result = verify_password(username, secret, client_ip=client_ip, mechanism=mechanism, cache_only=cache_only)
    if result is None:
        return None
    return Outcome(str(result.reason), result.username or username, result.mailbox_id, result.credential or "none")


@_job
def verify_password(client_ip: str, username: str, secret: str, mechanism: str) -> Outcome:
    return _password_outcome(client_ip, username, secret, mechanism, cache_only=False)


@_job
def verify_cached_password(client_ip: str, username: str, secret: str, mechanism: str) -> Outcome | None:
    """The fast path (its own thread pool): blocks, then the verifier answering only
    from its success cache, never hashing; None means "ask verify_password"."""
    return _password_outcome(client_ip, username, secret, mechanism, cache_only=True)


def cached_password(client_ip: str, username: str, secret: str, mechanism: str) -> tuple[Outcome, tuple | None] | None:
    """On the event loop, no I/O at all: (outcome, login write or None) when the block
    snapshot is fresh and either blocks this source or the notified verification cache
    (mailadmin.accounts.verify_cache, live on PostgreSQL) holds this success; None: go
    through the pools as before. The login write, when due, is write_login's arguments,
    for a pool: the same throttle as record_login (once a minute per credential, IP, mechanism)."""
    from mailadmin.accounts.verify_cache import cache

    if not cache.live():
        return None
    try:
        return _cached_password(client_ip, username, secret, mechanism)
    except Exception:  # whatever it was, the pools' path answers instead
        log.exception("answering from the verification cache failed")
        return None


def _cached_password(client_ip: str, username: str, secret: str, mechanism: str):
    from mailadmin.accounts import verify
    from mailadmin.monitoring.blocks import check_source_if_fresh

    username = verify.normalise_username(username)
    decision = check_source_if_fresh(client_ip, username)
    if decision is None:
        return None
    if decision.blocked and not decision.allowlisted:
        return Outcome(BLOCKED, username=username, block_id=decision.block_id), None
    cached = verify.answer_cached(username, secret, client_ip=client_ip)
    if cached is None:
        return None
    result, app_password_id = cached
    outcome = Outcome(str(result.reason), result.username, result.mailbox_id, result.credential)
    due = verify.login_write_due(
        result.mailbox_id, client_ip=client_ip, mechanism=mechanism, app_password_id=app_password_id
    )
    return outcome, ((result.mailbox_id, client_ip, mechanism, app_password_id) if due else None)


@_job
def refresh_blocks() -> None:
    from mailadmin.monitoring.blocks import refresh

    refresh()


@_job
def write_login(mailbox_id: int, client_ip: str, mechanism: str, app_password_id: int | None) -> None:
    from mailadmin.accounts.verify import write_login

    write_login(mailbox_id, client_ip=client_ip, mechanism=mechanism, app_password_id=app_password_id)


@_job
def scram_lookup(client_ip: str, username: str):
    """(Outcome, ScramLookup | None): the lookup carries salt and keys (fake ones for unknown users)."""
    from mailadmin.accounts.verify import normalise_username, scram_lookup

    username = normalise_username(username)
    blocked = _blocked(client_ip, username)
    if blocked:
        return blocked, None
    lookup = scram_lookup(username, client_ip=client_ip)
    return Outcome(str(lookup.reason), lookup.username or username, lookup.mailbox_id, "password"), lookup


@_job
def check_bearer(client_ip: str, username: str, token: str, mechanism: str) -> Outcome:
    """XOAUTH2 / OAUTHBEARER: blocks first, then mailadmin.oauth's token check.
    The credential names the token by id; the token itself goes nowhere."""
    from mailadmin.accounts.verify import normalise_username, record_login
    from mailadmin.oauth.tokens import check_bearer

    username = normalise_username(username) if username else ""
    blocked = _blocked(client_ip, username or None)
    if blocked:
        return blocked
    check = check_bearer(token, username)
    if check.ok:
        record_login(check.mailbox_id, client_ip=client_ip, mechanism=mechanism)
    credential = f"oauth_token:{check.token_id}" if check.token_id else "none"
    return Outcome(check.reason, check.username or username or None, check.mailbox_id, credential)


@_job
def record_login(mailbox_id: int, client_ip: str, mechanism: str) -> None:
    from mailadmin.accounts.verify import record_login

    record_login(mailbox_id, client_ip=client_ip, mechanism=mechanism)


@_job
def cram_verify(client_ip: str, username: str, challenge: bytes, digest_hex: str) -> Outcome:
    from mailadmin.accounts.verify import Reason, cram_lookup, normalise_username

    username = normalise_username(username)
    blocked = _blocked(client_ip, username)
    if blocked:
        return blocked
    lookup = cram_lookup(username, client_ip=client_ip)
    reason = str(lookup.reason)
    if reason == Reason.SUCCESS and not lookup.check(challenge, digest_hex):
        reason = str(Reason.BAD_CREDENTIALS)
    return Outcome(reason, lookup.username or username, lookup.mailbox_id, "password")


@_job
def cram_md5_enabled() -> bool:
    from mailadmin.accounts.verify import cram_md5_enabled_anywhere

    return bool(cram_md5_enabled_anywhere())


@_job
def sender_check(mailbox_id: int, address: str) -> tuple[bool, bool]:
    """(sender allowed, over the hourly send limit)."""
    from mailadmin.accounts.sending import hourly_send_limit, sender_allowed
    from smtpd.limits import messages_sent_this_hour

    if not sender_allowed(mailbox_id, address):
        return False, False
    return True, messages_sent_this_hour(mailbox_id) >= hourly_send_limit(mailbox_id)


@_job
def deliver(relay, mailbox_id: int, mail_from: str, rcpt_tos: list[str], message: bytes) -> None:
    from smtpd.limits import count_message_sent

    relay.deliver(mail_from, rcpt_tos, message)
    count_message_sent(mailbox_id)
