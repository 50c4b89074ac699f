"""The one place that knows how credentials are stored.

Every mailbox password is kept three ways, each made when the password is set
(or lazily after the next successful PLAIN/LOGIN, see verify.py):

* an Argon2id hash (Django's hasher "argon2smtp", parameters from settings);
* a SCRAM-SHA-256 verifier (RFC 5802/7677): own random salt, iterations,
  StoredKey = SHA256(HMAC(SaltedPassword, "Client Key")) and
  ServerKey = HMAC(SaltedPassword, "Server Key") with SaltedPassword =
  PBKDF2-HMAC-SHA256(SASLprep(password), salt, i). Never derived from another hash;
* only when the domain enables CRAM-MD5: the HMAC-MD5 key state (md5state.py),
  encrypted with MultiFernet under settings.CREDENTIAL_ENCRYPTION_KEYS.

App passwords are generated here (never chosen by a person) and kept only as
an Argon2id hash. Nothing in this module logs or returns a stored secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import stringprep
import threading
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from mailadmin.accounts import md5state
from mailadmin.accounts.models import AppPassword, Mailbox, PasswordHistory, PasswordPolicy

HASHER = "argon2smtp"
APP_PASSWORD_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
APP_PASSWORD_GROUPS = 4
APP_PASSWORD_GROUP_LEN = 4
HISTORY_KEEP_MAX = 24


class PasswordRejected(ValidationError):
    """The password fails the policy; .messages lists every failed rule."""


class CredentialKeyMissing(ImproperlyConfigured):
    pass


# --- bounding Argon2 ------------------------------------------------------------------

_argon2_slots: threading.BoundedSemaphore | None = None
_argon2_slots_size = 0
_argon2_slots_lock = threading.Lock()


@contextmanager
def argon2_slot():
    """Bound the Argon2 computations running at once in this process
    (settings.VERIFY_CONCURRENCY): each one takes memory and a core."""
    global _argon2_slots, _argon2_slots_size
    size = settings.VERIFY_CONCURRENCY
    if _argon2_slots is None or _argon2_slots_size != size:
        with _argon2_slots_lock:
            if _argon2_slots is None or _argon2_slots_size != size:
                _argon2_slots, _argon2_slots_size = threading.BoundedSemaphore(size), size
    slots = _argon2_slots
    with slots:
        yield


# A long-running server may hand the Argon2 computations to threads of its own
# (the smtpd runs them at a lower CPU priority, so they never slow its event loop
# or the cached logins); None: they run in the calling thread.
_argon2_runner = None


def set_argon2_runner(executor) -> None:
    """Run every Argon2 computation of this process on `executor` (None: inline)."""
    global _argon2_runner
    _argon2_runner = executor


def run_argon2(fn, *args):
    """fn(*args) within an Argon2 slot, on the runner's threads if one is set.
    The caller waits for the result either way (the time spent is unchanged)."""
    runner = _argon2_runner
    if runner is None:
        return _in_slot(fn, *args)
    return runner.submit(_in_slot, fn, *args).result()


def _in_slot(fn, *args):
    with argon2_slot():
        return fn(*args)


def hash_secret(raw: str) -> str:
    return run_argon2(make_password, raw, None, HASHER)


# --- SASLprep and SCRAM-SHA-256 ---------------------------------------------------------

_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,  # unassigned code points: prohibited for stored strings
)


def saslprep(raw: str) -> str:
    """SASLprep (RFC 4013, the stringprep profile RFC 5802 names; RFC 7613's
    OpaqueString gives the same result for ordinary passwords): map non-ASCII
    spaces to SPACE, drop "mapped to nothing" characters, NFKC-normalise, then
    check prohibited and bidirectional characters.

    A password that SASLprep rejects is used unchanged (as PostgreSQL does), so
    such a password still works with clients that skip SASLprep; ASCII
    passwords are never changed by this function."""
    if raw.isascii():
        return raw
    mapped = "".join(" " if stringprep.in_table_c12(c) else c for c in raw if not stringprep.in_table_b1(c))
    prepared = unicodedata.normalize("NFKC", mapped)
    if any(check(c) for c in prepared for check in _PROHIBITED):
        return raw
    has_ral = any(stringprep.in_table_d1(c) for c in prepared)
    if has_ral and (
        any(stringprep.in_table_d2(c) for c in prepared)
        or not stringprep.in_table_d1(prepared[0])
        or not stringprep.in_table_d1(prepared[-1])
    ):
        return raw
    return prepared


@dataclass(frozen=True)
class ScramVerifier:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def scram_salted_password(raw: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", saslprep(raw).encode("utf-8"), salt, iterations)


def scram_keys(salted_password: bytes) -> tuple[bytes, bytes]:
    client_key = hmac.new(salted_password, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted_password, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def make_scram_verifier(raw: str, *, salt: bytes | None = None, iterations: int | None = None) -> ScramVerifier:
    salt = salt if salt is not None else os.urandom(16)
    iterations = iterations or settings.SCRAM_ITERATIONS
    if iterations < 4096:
        raise ValueError("SCRAM-SHA-256 needs at least 4096 iterations (RFC 7677)")
    stored_key, server_key = scram_keys(scram_salted_password(raw, salt, iterations))
    return ScramVerifier(salt, iterations, stored_key, server_key)


# --- CRAM-MD5 state, encrypted at rest -------------------------------------------------


def _fernet() -> MultiFernet:
    keys = list(settings.CREDENTIAL_ENCRYPTION_KEYS)
    if not keys:
        raise CredentialKeyMissing(
            "CREDENTIAL_ENCRYPTION_KEYS is required when a domain enables CRAM-MD5 (README: Credential encryption keys)"
        )
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except (ValueError, TypeError):
        raise ImproperlyConfigured("CREDENTIAL_ENCRYPTION_KEYS holds a key that is not a Fernet key") from None


def encryption_available() -> bool:
    return bool(settings.CREDENTIAL_ENCRYPTION_KEYS)


def encrypt_cram_state(state: bytes) -> str:
    return _fernet().encrypt(state).decode("ascii")


def decrypt_cram_state(token: str) -> bytes:
    """Raises CredentialKeyMissing / InvalidToken when no configured key opens it."""
    return _fernet().decrypt(token.encode("ascii"))


def cram_state_for(raw: str) -> bytes:
    return md5state.hmac_md5_state(raw.encode("utf-8"))


def rotate_cram_states() -> tuple[int, int]:
    """Re-encrypt every stored CRAM-MD5 state under the newest key.
    Returns (rotated, unreadable); unreadable states are cleared (their mailboxes
    get a new one after the next PLAIN/LOGIN) so an old key can be retired."""
    fernet = _fernet()
    rotated = unreadable = 0
    for pk, token in Mailbox.objects.exclude(cram_md5_state="").values_list("pk", "cram_md5_state").iterator():
        try:
            new_token = fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            Mailbox.objects.filter(pk=pk, cram_md5_state=token).update(cram_md5_state="")
            unreadable += 1
            continue
        rotated += Mailbox.objects.filter(pk=pk, cram_md5_state=token).update(cram_md5_state=new_token)
    return rotated, unreadable


# --- mailbox passwords -----------------------------------------------------------------


def generate_password(mailbox: Mailbox | None = None, *, domain=None, local_part: str = "") -> str:
    """A random password (about 120 bits) that passes the policy in force."""
    from mailadmin.accounts.policy import check_password

    for _ in range(20):
        raw = secrets.token_urlsafe(20)
        if not check_password(raw, mailbox=mailbox, domain=domain, local_part=local_part):
            return raw
    raise RuntimeError("could not generate a password that passes the policy; check its settings")


def set_password(mailbox: Mailbox, raw: str, *, enforce_policy: bool = True) -> None:
    """Store a new mailbox password (hash, SCRAM verifier, CRAM-MD5 state when
    the domain enables it), push the old hash to the history, bump
    credentials_version. Raises PasswordRejected with every failed rule."""
    from mailadmin.accounts.policy import check_password

    if enforce_policy:
        problems = check_password(raw, mailbox=mailbox)
        if problems:
            raise PasswordRejected(problems)
    domain = mailbox.domain
    cram = encrypt_cram_state(cram_state_for(raw)) if domain.cram_md5_enabled else ""
    scram = make_scram_verifier(raw)
    new_hash = hash_secret(raw)
    with transaction.atomic():
        old_hash = mailbox.password_hash
        if mailbox.pk and old_hash:
            PasswordHistory.objects.create(mailbox=mailbox, password_hash=old_hash)
            keep = min(HISTORY_KEEP_MAX, max(PasswordPolicy.for_domain(domain).history_count, 1))
            stale = mailbox.password_history.values_list("pk", flat=True)[keep:]
            PasswordHistory.objects.filter(pk__in=list(stale)).delete()
        mailbox.password_hash = new_hash
        mailbox.password_changed_at = timezone.now()
        mailbox.expiry_notice_sent_at = None
        mailbox.scram_salt = scram.salt
        mailbox.scram_iterations = scram.iterations
        mailbox.scram_stored_key = scram.stored_key
        mailbox.scram_server_key = scram.server_key
        mailbox.cram_md5_state = cram
        if mailbox.pk:
            Mailbox.objects.filter(pk=mailbox.pk).update(
                password_hash=new_hash,
                password_changed_at=mailbox.password_changed_at,
                expiry_notice_sent_at=None,
                scram_salt=scram.salt,
                scram_iterations=scram.iterations,
                scram_stored_key=scram.stored_key,
                scram_server_key=scram.server_key,
                cram_md5_state=cram,
                credentials_version=F("credentials_version") + 1,
                updated=timezone.now(),
            )
            mailbox.refresh_from_db(fields=["credentials_version"])
        else:
            mailbox.save()


def clear_cram_state(mailbox: Mailbox) -> None:
    Mailbox.objects.filter(pk=mailbox.pk).update(cram_md5_state="", credentials_version=F("credentials_version") + 1)
    mailbox.cram_md5_state = ""


def add_transition_secrets(mailbox: Mailbox, raw: str) -> list[str]:
    """After a successful PLAIN/LOGIN with the mailbox password: create the SCRAM
    verifier and (if the domain enables CRAM-MD5) the CRAM state when missing.
    Written only if the password hash is still the one just verified."""
    updates = {}
    if mailbox.scram_stored_key is None:
        scram = make_scram_verifier(raw)
        updates.update(
            scram_salt=scram.salt,
            scram_iterations=scram.iterations,
            scram_stored_key=scram.stored_key,
            scram_server_key=scram.server_key,
        )
    if mailbox.domain.cram_md5_enabled and not mailbox.cram_md5_state and encryption_available():
        updates["cram_md5_state"] = encrypt_cram_state(cram_state_for(raw))
    if updates:
        Mailbox.objects.filter(pk=mailbox.pk, password_hash=mailbox.password_hash).update(**updates)
    return sorted(updates)


# --- app passwords ---------------------------------------------------------------------


def generate_app_password() -> str:
    """Four groups of four lowercase letters (about 75 bits), e.g. "qzvh-mkte-ryab-wdnc"."""
    groups = (
        "".join(secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(APP_PASSWORD_GROUP_LEN))
        for _ in range(APP_PASSWORD_GROUPS)
    )
    return "-".join(groups)


def normalise_app_password(raw: str) -> str | None:
    """The 16 letters of an app password typed with or without dashes/spaces,
    in any case; None if `raw` cannot be an app password."""
    compact = "".join(ch for ch in raw if ch not in "- ").lower()
    length = APP_PASSWORD_GROUPS * APP_PASSWORD_GROUP_LEN
    if len(compact) == length and all(ch in APP_PASSWORD_ALPHABET for ch in compact):
        return compact
    return None


def parse_networks(text_or_list) -> list[str]:
    """CIDR list from text (comma/whitespace separated) or a list; raises
    ValidationError naming each bad entry."""
    items = text_or_list.replace(",", " ").split() if isinstance(text_or_list, str) else list(text_or_list)
    networks, bad = [], []
    for item in items:
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            bad.append(item)
    if bad:
        raise ValidationError([f"{item!r} is not an IP network (use CIDR, e.g. 192.0.2.0/24)" for item in bad])
    return networks


def create_app_password(
    mailbox: Mailbox, name: str, *, expires_at=None, allowed_networks=()
) -> tuple[AppPassword, str]:
    """Returns (app password, the secret to show once)."""
    name = (name or "").strip()
    if not name:
        raise ValidationError("An app password needs a name (which client uses it).")
    networks = parse_networks(allowed_networks)
    secret = generate_app_password()
    with transaction.atomic():
        app = AppPassword.objects.create(
            mailbox=mailbox,
            name=name[:100],
            password_hash=hash_secret(normalise_app_password(secret)),
            expires_at=expires_at,
            allowed_networks=networks,
        )
        Mailbox.objects.filter(pk=mailbox.pk).update(credentials_version=F("credentials_version") + 1)
    return app, secret


def revoke_app_password(app: AppPassword) -> bool:
    """Revoke (idempotent). True if this call revoked it."""
    now = timezone.now()
    with transaction.atomic():
        changed = AppPassword.objects.filter(pk=app.pk, revoked_at__isnull=True).update(revoked_at=now)
        if changed:
            Mailbox.objects.filter(pk=app.mailbox_id).update(credentials_version=F("credentials_version") + 1)
    app.refresh_from_db(fields=["revoked_at"])
    return bool(changed)


def network_allowed(app: AppPassword, client_ip: str | None) -> bool:
    return networks_allow(network_objects(app.allowed_networks), client_ip)


def network_objects(values) -> tuple | None:
    """An app password's allowed_networks as ip_network objects; None: anywhere (an empty
    list). Entries that do not parse are left out (only these: nowhere, not anywhere)."""
    if not values:
        return None
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except (ValueError, TypeError):
            continue
    return tuple(networks)


def networks_allow(networks: tuple | None, client_ip: str | None) -> bool:
    if networks is None:
        return True
    if not client_ip:
        return False
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
