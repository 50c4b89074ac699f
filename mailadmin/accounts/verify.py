"""THE credential verifier: the smtpd (and anything else checking an SMTP
credential) calls these functions and nothing else. See README "Mailboxes and
credentials" for the reasons and the cache.

All functions are synchronous and thread-safe (Django gives each thread its own
database connection), and never raise: a database error gives TEMP_FAILURE.

Reasons are internal (for auth events); the SMTP reply must not tell them
apart except TEMP_FAILURE (454) and TRANSITION_NEEDED (432 4.7.12).

Order of checks in verify_password: the secret is always verified first (one
Argon2 computation, a dummy one for unknown users, so timing does not reveal
which addresses exist); then the account state (DISABLED/SUSPENDED are
reported whether or not the secret was right); then, only for a right
secret, the credential's own conditions (expiry, networks, app-password-only).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

import idna
from django.conf import settings
from django.contrib.auth.hashers import identify_hasher, make_password
from django.db import DatabaseError, connections
from django.utils import timezone
from django.utils.encoding import force_bytes

from mailadmin.accounts import credentials, verify_cache
from mailadmin.accounts.md5state import hmac_md5_from_state
from mailadmin.accounts.models import AppPassword, Domain, Mailbox, PasswordPolicy

logger = logging.getLogger(__name__)

LAST_USE_WRITE_INTERVAL = timedelta(seconds=60)


class Reason(StrEnum):
    SUCCESS = "success"
    BAD_CREDENTIALS = "bad_credentials"
    UNKNOWN_USER = "unknown_user"
    DISABLED = "disabled"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    APP_PASSWORD_REQUIRED = "app_password_required"
    NETWORK_NOT_ALLOWED = "network_not_allowed"
    TEMP_FAILURE = "temp_failure"
    TRANSITION_NEEDED = "transition_needed"


@dataclass(frozen=True)
class VerifyResult:
    reason: Reason
    username: str  # normalised address (domain as lowercase A-label; local part as stored)
    mailbox_id: int | None
    credential: str  # "password" | "app_password:<id>" | "none"

    @property
    def ok(self) -> bool:
        return self.reason == Reason.SUCCESS


@dataclass(frozen=True)
class ScramLookup:
    reason: Reason
    username: str
    mailbox_id: int | None
    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.reason == Reason.SUCCESS


@dataclass(frozen=True)
class CramLookup:
    reason: Reason
    username: str
    mailbox_id: int | None
    _state: bytes = field(default=b"", repr=False, compare=False)
    _client_ip: str | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.reason == Reason.SUCCESS

    def check(self, challenge: bytes, digest_hex: str) -> bool:
        """True only if the lookup succeeded and the client's digest is right.
        On success it also records the mailbox's last login (mechanism CRAM-MD5)."""
        state = self._state if len(self._state) == 32 else os.urandom(32)
        expected = hmac_md5_from_state(state, force_bytes(challenge)).hex()
        given = (digest_hex or "").strip().lower()
        matched = hmac.compare_digest(expected.encode(), given.encode("ascii", "replace"))
        ok = matched and self.reason == Reason.SUCCESS and len(self._state) == 32
        if ok and self.mailbox_id is not None:
            record_login(self.mailbox_id, client_ip=self._client_ip, mechanism="CRAM-MD5")
        return ok


# --- usernames --------------------------------------------------------------------------


def normalise_username(raw: str) -> str:
    """ "Bob@Bücher.Example." → "Bob@xn--bcher-kva.example": the domain as a
    lowercase A-label, the local part NFC-normalised but otherwise as given
    (results carry the stored spelling once the mailbox is found)."""
    raw = (raw or "").strip()
    local, sep, domain = raw.rpartition("@")
    if not sep or not local or not domain:
        return raw
    return f"{unicodedata.normalize('NFC', local)}@{_a_label(domain)}"


@functools.lru_cache(maxsize=4096)
def _a_label(domain: str) -> str:
    # idna's UTS #46 mapping costs ~0.1 ms in pure Python and every AUTH asks it a few
    # times for the same few domains.
    domain = domain.rstrip(".")
    try:
        domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        domain = domain.lower()
    return domain.lower()


class _MailboxQuery:
    """The mailbox, its domain and the maximum password age in force, in one
    statement whose SQL is built once per process from the models' columns.

    Every AUTH reads the row afresh (so any change takes effect on the next
    attempt); building that query through the ORM cost ~2.6 ms of CPU per AUTH
    (compiling the select_related join and the policy subqueries), ten times the
    round trip itself. The same rows and values as the ORM query it replaces:
    Mailbox.objects.select_related("domain").filter(domain__name=domain,
    Lower("local_part")=local lowered), annotated with the policy's max age.
    tests/accounts/test_verify.py checks it against the ORM."""

    def __init__(self):
        self._sql = None

    def _build(self):
        mailbox_fields = [f for f in Mailbox._meta.concrete_fields]
        domain_fields = [f for f in Domain._meta.concrete_fields]
        qn = connections["default"].ops.quote_name
        policy = qn(PasswordPolicy._meta.db_table)
        columns = [f"m.{qn(f.column)}" for f in mailbox_fields] + [f"d.{qn(f.column)}" for f in domain_fields]
        # Identifiers only come from the models' metadata (quoted); values are parameters.
        self._sql = (
            f"SELECT {', '.join(columns)}, COALESCE("  # noqa: S608
            f"(SELECT p.{qn('max_age_days')} FROM {policy} p WHERE p.{qn('domain_id')} = m.{qn('domain_id')} LIMIT 1), "
            f"(SELECT p.{qn('max_age_days')} FROM {policy} p WHERE p.{qn('domain_id')} IS NULL LIMIT 1), 0) "
            f"FROM {qn(Mailbox._meta.db_table)} m INNER JOIN {qn(Domain._meta.db_table)} d "
            f"ON m.{qn('domain_id')} = d.{qn('id')} "
            f"WHERE d.{qn('name')} = %s AND LOWER(m.{qn('local_part')}) = LOWER(%s) LIMIT 1"
        )
        self._mailbox_names = [f.attname for f in mailbox_fields]
        self._domain_names = [f.attname for f in domain_fields]
        # Fields that convert database values (none today; kept so a new one stays right).
        self._converters = [(i, f) for i, f in enumerate(mailbox_fields + domain_fields) if hasattr(f, "from_db_value")]

    def __call__(self, domain_name: str, local: str) -> Mailbox | None:
        if self._sql is None:
            self._build()
        connection = connections["default"]
        with connection.cursor() as cursor:
            cursor.execute(self._sql, [domain_name, local])
            row = cursor.fetchone()
        if row is None:
            return None
        values = list(row)
        for i, model_field in self._converters:
            values[i] = model_field.from_db_value(values[i], None, connection)
        split = len(self._mailbox_names)
        mailbox = Mailbox.from_db("default", self._mailbox_names, values[:split])
        domain = Domain.from_db("default", self._domain_names, values[split:-1])
        Mailbox.domain.field.set_cached_value(mailbox, domain)
        mailbox.policy_max_age_days = values[-1]
        return mailbox


_mailbox_query = _MailboxQuery()


def _find_mailbox(username: str) -> Mailbox | None:
    local, _, domain_name = username.rpartition("@")
    if not local or not domain_name:
        return None
    # LOWER(local_part) = LOWER(…) matches the (domain, lower(local_part)) unique index.
    return _mailbox_query(domain_name, local)


# --- Argon2 with a bound, dummy hashing, cache of recent successes ----------------------

_dummy = {"params": None, "hash": None}
_dummy_lock = threading.Lock()


def _dummy_hash() -> str:
    params = (settings.SMTP_ARGON2_TIME_COST, settings.SMTP_ARGON2_MEMORY_COST, settings.SMTP_ARGON2_PARALLELISM)
    with _dummy_lock:
        if _dummy["params"] != params:
            _dummy["hash"] = make_password(os.urandom(16).hex(), hasher=credentials.HASHER)
            _dummy["params"] = params
        return _dummy["hash"]


def _argon2_check(secret: str, encoded: str) -> bool:
    """Verify against any configured hasher (imported hashes may be PBKDF2 etc.)."""
    try:
        hasher = identify_hasher(encoded)
    except ValueError:
        # Unusable or unknown hash: still spend the time.
        _dummy_verify(secret)
        return False
    return credentials.run_argon2(hasher.verify, secret, encoded)


def _dummy_verify(secret: str) -> None:
    encoded = _dummy_hash()
    credentials.run_argon2(identify_hasher(encoded).verify, secret, encoded)


def _needs_rehash(encoded: str) -> bool:
    try:
        hasher = identify_hasher(encoded)
    except ValueError:
        return True
    return hasher.algorithm != credentials.HASHER or hasher.must_update(encoded)


class _SuccessCache:
    """Recent successful verifications: (kind, id) → (stored hash string,
    HMAC-SHA256 of the secret under a per-process random key, time).

    A hit needs the hash string just read from the database to be unchanged
    and the secret's HMAC to match, so a password change is effective on the
    next attempt; state, expiry, revocation and networks are always checked
    against the row just read. The HMAC key never leaves this process.

    It also remembers (address, HMAC of the secret) of recent successes, so a
    caller can tell before any database read whether an attempt will probably
    be answered from the cache (`probably_cached`): the smtpd sends those to a
    pool of their own, so they never wait behind Argon2 work. That is only a
    routing hint: verification still reads the row and checks the cache entry."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, int], tuple[str, bytes, float]] = OrderedDict()
        self._names: OrderedDict[tuple[str, bytes], float] = OrderedDict()
        self._mac = verify_cache.secret_mac

    def hit(self, key: tuple[str, int], stored_hash: str, secret: str) -> bool:
        ttl = settings.VERIFY_CACHE_TTL
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            cached_hash, mac, stamp = entry
            if time.monotonic() - stamp > ttl or cached_hash != stored_hash:
                del self._entries[key]
                return False
        return hmac.compare_digest(mac, self._mac(secret))

    def put(self, key: tuple[str, int], stored_hash: str, secret: str, name: str = "") -> None:
        size = settings.VERIFY_CACHE_SIZE
        if size <= 0 or settings.VERIFY_CACHE_TTL <= 0:
            return
        mac, now = self._mac(secret), time.monotonic()
        with self._lock:
            self._entries[key] = (stored_hash, mac, now)
            self._entries.move_to_end(key)
            while len(self._entries) > size:
                self._entries.popitem(last=False)
            if name:
                hint = (name.lower(), mac)
                self._names[hint] = now
                self._names.move_to_end(hint)
                while len(self._names) > size:
                    self._names.popitem(last=False)

    def probably_cached(self, name: str, secret: str) -> bool:
        """Whether this address and secret succeeded recently (a hint, see the class)."""
        hint = (name.lower(), self._mac(secret))
        with self._lock:
            stamp = self._names.get(hint)
            if stamp is None:
                return False
            if time.monotonic() - stamp > settings.VERIFY_CACHE_TTL:
                del self._names[hint]
                return False
            return True

    def discard(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._names.clear()

    def __len__(self):
        return len(self._entries)


success_cache = _SuccessCache()


def _check_secret(kind: str, pk: int, stored_hash: str, secret: str) -> tuple[bool, bool]:
    """(matched, from_cache)."""
    if not stored_hash:
        return False, False
    if success_cache.hit((kind, pk), stored_hash, secret):
        return True, True
    return _argon2_check(secret, stored_hash), False


# --- helpers ----------------------------------------------------------------------------


def _clean_ip(client_ip: str | None) -> str | None:
    if not client_ip:
        return None
    try:
        ip = ipaddress.ip_address(str(client_ip).strip())
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def _state_reason(mailbox: Mailbox) -> Reason | None:
    if mailbox.state == Mailbox.State.DISABLED or not mailbox.domain.is_active:
        return Reason.DISABLED
    if mailbox.state == Mailbox.State.SUSPENDED:
        return Reason.SUSPENDED
    return None


def password_expires_at(mailbox: Mailbox):
    """When the mailbox password expires under the policy in force (None: never)."""
    max_age_days = getattr(mailbox, "policy_max_age_days", None)
    if max_age_days is None:
        max_age_days = PasswordPolicy.for_domain(mailbox.domain).max_age_days
    changed = mailbox.password_changed_at or mailbox.created
    if not max_age_days or changed is None:
        return None
    return changed + timedelta(days=max_age_days)


def password_expired(mailbox: Mailbox, now=None) -> bool:
    expires_at = password_expires_at(mailbox)
    return expires_at is not None and expires_at <= (now or timezone.now())


def _after_database_error() -> None:
    """Drop a broken connection so the next call in this thread reconnects."""
    try:
        conn = connections["default"]
        if not conn.in_atomic_block:
            conn.close()
    except Exception:  # noqa: S110 - best effort; the caller already reports TEMP_FAILURE
        pass


class _RecentLogins:
    """(credential, IP, mechanism) recorded by this process in the last minute:
    repeated logins then cost no database write at all."""

    MAX = 50000

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: dict[tuple, float] = {}

    def seen(self, key: tuple, ip, mechanism) -> bool:
        now = time.monotonic()
        full_key = (*key, ip, mechanism)
        with self._lock:
            stamp = self._seen.get(full_key)
            if stamp is not None and now - stamp < LAST_USE_WRITE_INTERVAL.total_seconds():
                return True
            if len(self._seen) >= self.MAX:
                self._seen.clear()
            self._seen[full_key] = now
            return False

    def clear(self):
        with self._lock:
            self._seen.clear()


_recent_logins = _RecentLogins()


def record_login(
    mailbox_id: int,
    *,
    client_ip: str | None = None,
    mechanism: str = "",
    app_password_id: int | None = None,
) -> None:
    """Record a successful login (mailbox, and the app password if one was used).
    verify_password and CramLookup.check call this themselves; the smtpd calls
    it after a successful SCRAM exchange. Writes at most once a minute per
    credential unless the IP or mechanism changed. Never raises."""
    if login_write_due(mailbox_id, client_ip=client_ip, mechanism=mechanism, app_password_id=app_password_id):
        write_login(mailbox_id, client_ip=client_ip, mechanism=mechanism, app_password_id=app_password_id)


def login_write_due(
    mailbox_id: int, *, client_ip: str | None, mechanism: str, app_password_id: int | None = None
) -> bool:
    """record_login's throttle on its own (memory only, so the smtpd may ask on its event
    loop): True once a minute per credential, IP and mechanism; then call write_login."""
    key = ("mailbox", mailbox_id, app_password_id)
    return not _recent_logins.seen(key, _clean_ip(client_ip), (mechanism or "")[:20])


def write_login(mailbox_id: int, *, client_ip: str | None, mechanism: str, app_password_id: int | None = None) -> None:
    """The database half of record_login (unthrottled; never raises)."""
    ip = _clean_ip(client_ip)
    mechanism = (mechanism or "")[:20]
    now = timezone.now()
    try:
        Mailbox.objects.filter(pk=mailbox_id).exclude(
            last_login_at__gt=now - LAST_USE_WRITE_INTERVAL, last_login_ip=ip, last_login_mechanism=mechanism
        ).update(last_login_at=now, last_login_ip=ip, last_login_mechanism=mechanism)
        if app_password_id is not None:
            AppPassword.objects.filter(pk=app_password_id).exclude(
                last_used_at__gt=now - LAST_USE_WRITE_INTERVAL, last_used_ip=ip, last_used_mechanism=mechanism
            ).update(last_used_at=now, last_used_ip=ip, last_used_mechanism=mechanism)
    except DatabaseError as exc:
        logger.warning("could not record a login for mailbox %s: %s", mailbox_id, _describe(exc))
        _after_database_error()


def _describe(exc: DatabaseError) -> str:
    """One log line per failed attempt during an outage, not a traceback each: the
    error's class and first line say what is wrong (the server is down, a timeout)."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"database error {type(exc).__name__}: {first}" if first else f"database error {type(exc).__name__}"


# --- verify_password --------------------------------------------------------------------


def verify_password(
    username: str, secret: str, *, client_ip: str | None = None, mechanism: str = "PLAIN", cache_only: bool = False
) -> VerifyResult | None:
    """Check a mailbox password or app password (PLAIN, LOGIN, and the web).

    cache_only=True: answer only if the secret is confirmed by the success cache
    (the row is still read and every condition checked, exactly as below), else
    return None without any Argon2 work; the caller then calls again without it."""
    name = normalise_username(username if isinstance(username, str) else "")
    try:
        if isinstance(secret, bytes | bytearray):
            secret = bytes(secret).decode("utf-8", "surrogateescape")
        return _verify_password(name, secret or "", _clean_ip(client_ip), mechanism, cache_only)
    except DatabaseError as exc:
        logger.warning("credential check for %r failed: %s", name, _describe(exc))
        _after_database_error()
        return VerifyResult(Reason.TEMP_FAILURE, name, None, "none")
    except Exception:
        logger.exception("credential check for %r failed unexpectedly", name)
        return VerifyResult(Reason.TEMP_FAILURE, name, None, "none")


def answer_cached(
    username: str, secret: str, *, client_ip: str | None = None
) -> tuple[VerifyResult, int | None] | None:
    """(success, app password id or None) straight from memory, no database read, when the
    notified cache (verify_cache: PostgreSQL, listener connected) holds this address and
    secret and the credential is still usable now from this address; else None (then call
    verify_password). The caller records the login: login_write_due(), then write_login()."""
    if not isinstance(username, str) or not isinstance(secret, str) or not secret or not verify_cache.cache.live():
        return None
    return _cached_success(normalise_username(username), secret, _clean_ip(client_ip))


def _cached_success(name: str, secret: str, client_ip: str | None) -> tuple[VerifyResult, int | None] | None:
    entry = verify_cache.cache.get(name, secret, timezone.now(), client_ip)
    if entry is None:
        return None
    return VerifyResult(Reason.SUCCESS, entry.address, entry.mailbox_id, entry.credential), entry.app_password_id


def _remember_success(since: int, asked: str, secret: str, mailbox: Mailbox, app: AppPassword | None, stored: str):
    """Put a success into the notified cache with everything it depended on."""
    if not verify_cache.cache.live():
        return
    entry = verify_cache.Entry(
        mailbox_id=mailbox.pk,
        address=mailbox.address,
        credential=f"app_password:{app.pk}" if app else "password",
        app_password_id=app.pk if app else None,
        stored_hash=stored,
        state=mailbox.state,
        expires_at=app.expires_at if app else password_expires_at(mailbox),
        networks=credentials.network_objects(app.allowed_networks) if app else None,
        stored_at=time.monotonic(),
    )
    verify_cache.cache.put(since, asked, secret, entry)


def probably_cached(username: str, secret: str) -> bool:
    """Whether verify_password(username, secret, cache_only=True) will probably
    answer (the pair succeeded recently in this process). Cheap: no database."""
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return False
    return success_cache.probably_cached(normalise_username(username), secret)


def _verify_password(
    name: str, secret: str, client_ip: str | None, mechanism: str, cache_only: bool = False
) -> VerifyResult | None:
    cached = _cached_success(name, secret, client_ip)  # None unless the notified cache is live
    if cached is not None:
        result, app_password_id = cached
        record_login(result.mailbox_id, client_ip=client_ip, mechanism=mechanism, app_password_id=app_password_id)
        return result
    since = verify_cache.cache.begin()  # before the read: changes after it refuse the put
    asked = name
    app_secret = credentials.normalise_app_password(secret)
    mailbox = _find_mailbox(name)
    if mailbox is None:
        if cache_only:
            return None
        _dummy_verify(secret)
        if app_secret is not None:
            _dummy_verify(app_secret)  # a known mailbox would also try its app password(s)
        return VerifyResult(Reason.UNKNOWN_USER, name, None, "none")
    name = mailbox.address
    now = timezone.now()
    hashed = False

    matched_app: AppPassword | None = None
    matched_app_cached = False
    if app_secret is not None:
        apps = list(mailbox.app_passwords.filter(revoked_at__isnull=True).order_by("-last_used_at", "-id"))
        for app in apps:
            if success_cache.hit(("app", app.pk), app.password_hash, app_secret):
                matched_app, matched_app_cached = app, True
                break
        else:
            if cache_only and apps:
                return None  # the full check tries every app password before the mailbox password
            for app in apps:
                hashed = True
                if _argon2_check(app_secret, app.password_hash):
                    matched_app = app
                    break

    password_ok = password_cached = False
    if matched_app is None and mailbox.password_hash:
        if cache_only:
            if not success_cache.hit(("password", mailbox.pk), mailbox.password_hash, secret):
                return None
            password_ok = password_cached = True
        else:
            password_ok, password_cached = _check_secret("password", mailbox.pk, mailbox.password_hash, secret)
        hashed = hashed or not password_cached
    if not hashed and matched_app is None and not password_ok:
        if cache_only:
            return None
        _dummy_verify(secret)

    credential = f"app_password:{matched_app.pk}" if matched_app else ("password" if password_ok else "none")
    state = _state_reason(mailbox)
    if state is not None:
        return VerifyResult(state, name, mailbox.pk, credential)
    if matched_app is not None:
        if matched_app.is_expired(now):
            return VerifyResult(Reason.EXPIRED, name, mailbox.pk, credential)
        if not credentials.network_allowed(matched_app, client_ip):
            return VerifyResult(Reason.NETWORK_NOT_ALLOWED, name, mailbox.pk, credential)
        if cache_only and _needs_rehash(matched_app.password_hash):
            return None  # re-hashing is Argon2 work: the full path does it
        stored = _upgrade_app_password(matched_app, app_secret)
        if not matched_app_cached or stored != matched_app.password_hash:
            success_cache.put(("app", matched_app.pk), stored, app_secret, name)
        _remember_success(since, asked, secret, mailbox, matched_app, stored)
        record_login(mailbox.pk, client_ip=client_ip, mechanism=mechanism, app_password_id=matched_app.pk)
        return VerifyResult(Reason.SUCCESS, name, mailbox.pk, credential)
    if not password_ok:
        return VerifyResult(Reason.BAD_CREDENTIALS, name, mailbox.pk, "none")
    if mailbox.domain.require_app_passwords:
        return VerifyResult(Reason.APP_PASSWORD_REQUIRED, name, mailbox.pk, credential)
    if password_expired(mailbox, now):
        return VerifyResult(Reason.EXPIRED, name, mailbox.pk, credential)
    if cache_only and _needs_rehash(mailbox.password_hash):
        return None
    stored = _upgrade_mailbox_password(mailbox, secret)
    if not password_cached or stored != mailbox.password_hash:
        success_cache.put(("password", mailbox.pk), stored, secret, name)
    if not mailbox.has_scram or (mailbox.domain.cram_md5_enabled and not mailbox.cram_md5_state):
        credentials.add_transition_secrets(mailbox, secret)
    else:  # (after a transition, the next success is remembered: the secrets' write drops entries)
        _remember_success(since, asked, secret, mailbox, None, stored)
    record_login(mailbox.pk, client_ip=client_ip, mechanism=mechanism)
    return VerifyResult(Reason.SUCCESS, name, mailbox.pk, credential)


def _upgrade_mailbox_password(mailbox: Mailbox, secret: str) -> str:
    """Re-hash with the current parameters if needed; returns the stored hash."""
    if not _needs_rehash(mailbox.password_hash):
        return mailbox.password_hash
    new_hash = credentials.hash_secret(secret)
    updated = Mailbox.objects.filter(pk=mailbox.pk, password_hash=mailbox.password_hash).update(password_hash=new_hash)
    if updated:
        mailbox.password_hash = new_hash
        # The history keeps older hashes; the upgraded hash is the same password.
    return mailbox.password_hash


def _upgrade_app_password(app: AppPassword, secret: str) -> str:
    if not _needs_rehash(app.password_hash):
        return app.password_hash
    new_hash = credentials.hash_secret(secret)
    if AppPassword.objects.filter(pk=app.pk, password_hash=app.password_hash).update(password_hash=new_hash):
        app.password_hash = new_hash
    return app.password_hash


# --- SCRAM-SHA-256 and CRAM-MD5 lookups ------------------------------------------------


def _fake_key() -> bytes:
    return hashlib.sha256(b"mailadmin.scram-fake:" + force_bytes(settings.SECRET_KEY)).digest()


def _fake_scram(reason: Reason, name: str, mailbox_id: int | None) -> ScramLookup:
    """Stable salt/iterations for a name (the same on every node, so probing
    cannot tell a fake from a real verifier) and random keys, so the exchange
    fails at the end like a wrong password."""
    salt = hmac.new(_fake_key(), b"salt\x00" + name.lower().encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return ScramLookup(reason, name, mailbox_id, salt[:16], settings.SCRAM_ITERATIONS, os.urandom(32), os.urandom(32))


def _credential_reason(mailbox: Mailbox) -> Reason | None:
    """Why the mailbox password cannot be used at all, before any secret is seen."""
    state = _state_reason(mailbox)
    if state is not None:
        return state
    if mailbox.domain.require_app_passwords:
        return Reason.APP_PASSWORD_REQUIRED
    if password_expired(mailbox):
        return Reason.EXPIRED
    return None


def scram_lookup(username: str, *, client_ip: str | None = None) -> ScramLookup:
    """The SCRAM-SHA-256 verifier of a mailbox password (app passwords have none).
    Anything but SUCCESS comes with fake material; the smtpd runs the exchange
    to the end and fails it, reporting `reason` in the event. After a successful
    exchange the smtpd calls record_login(mailbox_id, ..., mechanism="SCRAM-SHA-256")."""
    name = normalise_username(username if isinstance(username, str) else "")
    try:
        mailbox = _find_mailbox(name)
        if mailbox is None:
            return _fake_scram(Reason.UNKNOWN_USER, name, None)
        name = mailbox.address
        reason = _credential_reason(mailbox)
        if reason is None and not mailbox.has_scram:
            reason = Reason.TRANSITION_NEEDED
        if reason is not None:
            return _fake_scram(reason, name, mailbox.pk)
        return ScramLookup(
            Reason.SUCCESS,
            name,
            mailbox.pk,
            bytes(mailbox.scram_salt),
            mailbox.scram_iterations,
            bytes(mailbox.scram_stored_key),
            bytes(mailbox.scram_server_key),
        )
    except DatabaseError as exc:
        logger.warning("SCRAM lookup for %r failed: %s", name, _describe(exc))
        _after_database_error()
        return _fake_scram(Reason.TEMP_FAILURE, name, None)
    except Exception:
        logger.exception("SCRAM lookup for %r failed unexpectedly", name)
        return _fake_scram(Reason.TEMP_FAILURE, name, None)


def cram_lookup(username: str, *, client_ip: str | None = None) -> CramLookup:
    """The CRAM-MD5 state of a mailbox password. A domain with CRAM-MD5 off
    gives BAD_CREDENTIALS (the client's digest cannot be checked)."""
    name = normalise_username(username if isinstance(username, str) else "")
    ip = _clean_ip(client_ip)
    try:
        mailbox = _find_mailbox(name)
        if mailbox is None:
            return CramLookup(Reason.UNKNOWN_USER, name, None)
        name = mailbox.address
        reason = _state_reason(mailbox)
        if reason is None and not mailbox.domain.cram_md5_enabled:
            reason = Reason.BAD_CREDENTIALS
        reason = reason or _credential_reason(mailbox)
        if reason is None and not mailbox.cram_md5_state:
            reason = Reason.TRANSITION_NEEDED
        if reason is not None:
            return CramLookup(reason, name, mailbox.pk)
        state = credentials.decrypt_cram_state(mailbox.cram_md5_state)
        return CramLookup(Reason.SUCCESS, name, mailbox.pk, state, ip)
    except DatabaseError as exc:
        logger.warning("CRAM-MD5 lookup for %r failed: %s", name, _describe(exc))
        _after_database_error()
        return CramLookup(Reason.TEMP_FAILURE, name, None)
    except Exception:
        # Also a missing or wrong CREDENTIAL_ENCRYPTION_KEYS (InvalidToken, CredentialKeyMissing).
        logger.exception("CRAM-MD5 lookup for %r failed", name)
        return CramLookup(Reason.TEMP_FAILURE, name, None)


_cram_anywhere = {"value": False, "at": -1e9}
CRAM_ANYWHERE_TTL = 5.0


def cram_md5_enabled_anywhere() -> bool:
    """Whether any active domain enables CRAM-MD5 (the smtpd advertises it only
    then). Cached for a few seconds per process."""
    now = time.monotonic()
    if now - _cram_anywhere["at"] < CRAM_ANYWHERE_TTL:
        return _cram_anywhere["value"]
    try:
        value = Domain.objects.filter(cram_md5_enabled=True, is_active=True).exists()
    except DatabaseError:
        _after_database_error()
        return _cram_anywhere["value"]
    _cram_anywhere.update(value=value, at=now)
    return value


def clear_caches() -> None:
    """Forget cached verifications and the CRAM-MD5 flag (tests, key rotation)."""
    success_cache.clear()
    verify_cache.cache.clear()
    _recent_logins.clear()
    _cram_anywhere.update(value=False, at=-1e9)
