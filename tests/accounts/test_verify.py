"""The credential verifier: every reason, the cache, timing, upgrades, lookups."""

import base64
import hashlib
import hmac
import time
from datetime import timedelta

import pytest
from django.contrib.auth.hashers import make_password
from django.db import connection
from django.utils import timezone

from mailadmin.accounts import credentials, md5state, verify
from mailadmin.accounts.mailboxes import suspend
from mailadmin.accounts.models import AppPassword, Mailbox, PasswordPolicy
from mailadmin.accounts.verify import Reason, verify_password

from .conftest import GOOD_PASSWORD

NEW_PASSWORD = "quartz-Lantern-meadow-47-oboe"


@pytest.mark.embedded
def test_success_with_the_mailbox_password(mailbox_a):
    result = verify_password("alice@a.example", GOOD_PASSWORD, client_ip="192.0.2.7", mechanism="PLAIN")
    assert result.ok and result.reason == Reason.SUCCESS
    assert result.username == "alice@a.example" and result.mailbox_id == mailbox_a.pk
    assert result.credential == "password"
    mailbox_a.refresh_from_db()
    assert mailbox_a.last_login_ip == "192.0.2.7" and mailbox_a.last_login_mechanism == "PLAIN"


def test_username_is_normalised(domain_a, make_mailbox):
    domain_a.name = "xn--bcher-kva.example"
    domain_a.save()
    mailbox = make_mailbox(domain_a, "Alice")
    assert verify.normalise_username(" Alice@Bücher.Example. ") == "Alice@xn--bcher-kva.example"
    result = verify_password("ALICE@BÜCHER.example", GOOD_PASSWORD)
    assert result.ok and result.username == "Alice@xn--bcher-kva.example" and result.mailbox_id == mailbox.pk


def test_bad_credentials(mailbox_a):
    result = verify_password("alice@a.example", "wrong password entirely")
    assert result.reason == Reason.BAD_CREDENTIALS and not result.ok
    assert result.mailbox_id == mailbox_a.pk and result.credential == "none"


@pytest.mark.embedded
def test_unknown_user(db, domain_a):
    for name in ("nobody@a.example", "nobody@nowhere.example", "no-at-sign", ""):
        result = verify_password(name, GOOD_PASSWORD)
        assert result.reason == Reason.UNKNOWN_USER and result.mailbox_id is None and result.credential == "none"


def test_disabled_and_suspended_and_inactive_domain(mailbox_a):
    suspend(mailbox_a, "phished")
    assert verify_password("alice@a.example", GOOD_PASSWORD).reason == Reason.SUSPENDED
    # Reported whatever the secret: the account state is why it is refused.
    assert verify_password("alice@a.example", "not it at all").reason == Reason.SUSPENDED
    Mailbox.objects.filter(pk=mailbox_a.pk).update(state=Mailbox.State.DISABLED)
    assert verify_password("alice@a.example", GOOD_PASSWORD).reason == Reason.DISABLED
    Mailbox.objects.filter(pk=mailbox_a.pk).update(state=Mailbox.State.ACTIVE)
    mailbox_a.domain.is_active = False
    mailbox_a.domain.save()
    assert verify_password("alice@a.example", GOOD_PASSWORD).reason == Reason.DISABLED


def test_expired_password(mailbox_a):
    policy = PasswordPolicy.global_policy()
    policy.max_age_days = 30
    policy.save()
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok  # cache now warm
    Mailbox.objects.filter(pk=mailbox_a.pk).update(password_changed_at=timezone.now() - timedelta(days=31))
    result = verify_password("alice@a.example", GOOD_PASSWORD)
    assert result.reason == Reason.EXPIRED and result.credential == "password"
    assert verify.scram_lookup("alice@a.example").reason == Reason.EXPIRED


def test_app_password_success_and_last_use(mailbox_a):
    app, secret = credentials.create_app_password(mailbox_a, "Thunderbird")
    for typed in (secret, secret.replace("-", ""), secret.upper().replace("-", " ")):
        result = verify_password("alice@a.example", typed, client_ip="198.51.100.4", mechanism="LOGIN")
        assert result.ok and result.credential == f"app_password:{app.pk}"
    app.refresh_from_db()
    assert app.last_used_ip == "198.51.100.4" and app.last_used_mechanism == "LOGIN"


def test_app_password_required(domain_a, mailbox_a):
    domain_a.require_app_passwords = True
    domain_a.save()
    _, secret = credentials.create_app_password(mailbox_a, "phone")
    result = verify_password("alice@a.example", GOOD_PASSWORD)
    assert result.reason == Reason.APP_PASSWORD_REQUIRED and result.credential == "password"
    assert verify_password("alice@a.example", secret).ok
    assert verify.scram_lookup("alice@a.example").reason == Reason.APP_PASSWORD_REQUIRED


def test_app_password_networks(mailbox_a):
    app, secret = credentials.create_app_password(mailbox_a, "office", allowed_networks="192.0.2.0/24, 2001:db8::/32")
    assert verify_password("alice@a.example", secret, client_ip="192.0.2.99").ok
    assert verify_password("alice@a.example", secret, client_ip="::ffff:192.0.2.5").ok
    assert verify_password("alice@a.example", secret, client_ip="2001:db8::1").ok
    for ip in ("203.0.113.1", None, "not-an-ip"):
        result = verify_password("alice@a.example", secret, client_ip=ip)
        assert result.reason == Reason.NETWORK_NOT_ALLOWED and result.credential == f"app_password:{app.pk}"


@pytest.mark.django_db(transaction=True)
def test_temp_failure_when_the_database_is_unreachable(domain_a, make_mailbox):
    make_mailbox(domain_a, "alice")
    saved = dict(connection.settings_dict)
    connection.close()
    # A real connection failure: point the connection at a closed port.
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = "/nonexistent-dir/db.sqlite3"
    else:
        connection.settings_dict["PORT"] = "1"
    try:
        assert verify_password("alice@a.example", GOOD_PASSWORD).reason == Reason.TEMP_FAILURE
        assert verify.scram_lookup("alice@a.example").reason == Reason.TEMP_FAILURE
        assert verify.cram_lookup("alice@a.example").reason == Reason.TEMP_FAILURE
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok  # reconnects afterwards


# --- the cache: every change takes effect on the next attempt ---------------------------


def _warm(username, secret):
    assert verify_password(username, secret).ok
    assert verify_password(username, secret).ok  # second one from the cache
    assert len(verify.success_cache) >= 1


def test_cache_makes_repeat_success_cheap(mailbox_a):
    start = time.perf_counter()
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    cold = time.perf_counter() - start
    start = time.perf_counter()
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    warm = time.perf_counter() - start
    print(f"cold {cold * 1000:.1f} ms, cached {warm * 1000:.1f} ms")
    assert warm < cold


def test_password_change_takes_effect_with_warm_cache(mailbox_a):
    _warm("alice@a.example", GOOD_PASSWORD)
    credentials.set_password(Mailbox.objects.get(pk=mailbox_a.pk), NEW_PASSWORD)
    assert verify_password("alice@a.example", GOOD_PASSWORD).reason == Reason.BAD_CREDENTIALS
    assert verify_password("alice@a.example", NEW_PASSWORD).ok


def test_wrong_password_is_never_accepted_from_cache(mailbox_a):
    _warm("alice@a.example", GOOD_PASSWORD)
    assert verify_password("alice@a.example", GOOD_PASSWORD + "x").reason == Reason.BAD_CREDENTIALS


def test_suspension_takes_effect_with_warm_cache(mailbox_a):
    _warm("alice@a.example", GOOD_PASSWORD)
    suspend(Mailbox.objects.get(pk=mailbox_a.pk), "abuse")
    assert verify_password("alice@a.example", GOOD_PASSWORD).reason == Reason.SUSPENDED


def test_revocation_takes_effect_with_warm_cache(mailbox_a):
    app, secret = credentials.create_app_password(mailbox_a, "laptop")
    _warm("alice@a.example", secret)
    credentials.revoke_app_password(AppPassword.objects.get(pk=app.pk))
    result = verify_password("alice@a.example", secret)
    assert result.reason == Reason.BAD_CREDENTIALS and result.credential == "none"


def test_app_password_expiry_takes_effect_with_warm_cache(mailbox_a):
    app, secret = credentials.create_app_password(mailbox_a, "tablet", expires_at=timezone.now() + timedelta(days=1))
    _warm("alice@a.example", secret)
    AppPassword.objects.filter(pk=app.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert verify_password("alice@a.example", secret).reason == Reason.EXPIRED


def test_network_change_takes_effect_with_warm_cache(mailbox_a):
    app, secret = credentials.create_app_password(mailbox_a, "desk")
    assert verify_password("alice@a.example", secret, client_ip="203.0.113.9").ok
    AppPassword.objects.filter(pk=app.pk).update(allowed_networks=["192.0.2.0/24"])
    assert verify_password("alice@a.example", secret, client_ip="203.0.113.9").reason == Reason.NETWORK_NOT_ALLOWED


def test_cache_is_bounded(mailbox_a, make_mailbox, domain_a, settings):
    settings.VERIFY_CACHE_SIZE = 1
    make_mailbox(domain_a, "carol")
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    assert verify_password("carol@a.example", GOOD_PASSWORD).ok
    assert len(verify.success_cache) == 1


# --- timing -----------------------------------------------------------------------------


def test_unknown_user_costs_about_as_much_as_a_wrong_password(mailbox_a):
    samples = {"alice@a.example": [], "ghost@a.example": []}
    verify_password("ghost@a.example", "warm up the dummy hash")
    for _ in range(7):  # interleaved, so load on the machine hits both alike
        for username, times in samples.items():
            start = time.perf_counter()
            verify_password(username, "some wrong guess 123")
            times.append(time.perf_counter() - start)
    known, unknown = (sorted(t)[len(t) // 2] for t in samples.values())
    ratio = unknown / known
    print(f"median wrong password {known * 1000:.1f} ms, unknown user {unknown * 1000:.1f} ms, ratio {ratio:.2f}")
    assert 0.4 < ratio < 2.5


# --- upgrades and transition secrets ----------------------------------------------------


def test_outdated_hash_is_upgraded_after_success(mailbox_a, settings):
    old_hash = make_password(GOOD_PASSWORD, hasher="pbkdf2_sha256")
    Mailbox.objects.filter(pk=mailbox_a.pk).update(password_hash=old_hash)
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    mailbox_a.refresh_from_db()
    assert mailbox_a.password_hash.startswith("argon2smtp$")
    settings.SMTP_ARGON2_TIME_COST = 3
    verify.clear_caches()
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    mailbox_a.refresh_from_db()
    assert "t=3" in mailbox_a.password_hash
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok


def test_scram_verifier_created_after_plain_login(mailbox_a):
    Mailbox.objects.filter(pk=mailbox_a.pk).update(
        scram_salt=None, scram_iterations=None, scram_stored_key=None, scram_server_key=None
    )
    assert verify.scram_lookup("alice@a.example").reason == Reason.TRANSITION_NEEDED
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    lookup = verify.scram_lookup("alice@a.example")
    assert lookup.reason == Reason.SUCCESS
    salted = credentials.scram_salted_password(GOOD_PASSWORD, lookup.salt, lookup.iterations)
    assert credentials.scram_keys(salted) == (lookup.stored_key, lookup.server_key)


def test_scram_lookup_unknown_user_is_stable_and_fails(db, domain_a):
    one, two = verify.scram_lookup("ghost@a.example"), verify.scram_lookup("ghost@a.example")
    assert one.reason == Reason.UNKNOWN_USER
    assert one.salt == two.salt and one.iterations == two.iterations
    assert one.stored_key != two.stored_key
    assert len(one.salt) == 16 and "stored_key" not in repr(one) or "b'" not in repr(one).split("iterations")[1]


def test_scram_full_exchange_with_real_verifier(mailbox_a):
    lookup = verify.scram_lookup("alice@a.example")
    assert lookup.ok and lookup.mailbox_id == mailbox_a.pk
    salted = hashlib.pbkdf2_hmac("sha256", GOOD_PASSWORD.encode(), lookup.salt, lookup.iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    auth_message = b"n=alice,r=abc,r=abcdef,s=" + base64.b64encode(lookup.salt) + b",i=4096,c=biws,r=abcdef"
    signature = hmac.new(lookup.stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
    assert hashlib.sha256(recovered).digest() == lookup.stored_key


def test_scram_lookup_reasons(mailbox_a):
    suspend(mailbox_a, "x")
    assert verify.scram_lookup("alice@a.example").reason == Reason.SUSPENDED
    assert verify.scram_lookup("nobody@a.example").reason == Reason.UNKNOWN_USER


def _cram_digest(password: str, challenge: bytes) -> str:
    return hmac.new(password.encode(), challenge, "md5").hexdigest()


def test_cram_md5(domain_a, make_mailbox):
    domain_a.cram_md5_enabled = True
    domain_a.save()
    verify.clear_caches()
    assert verify.cram_md5_enabled_anywhere()
    mailbox = make_mailbox(domain_a, "tim", password="tanstaaf-tanstaaf-Bramble-6")
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    lookup = verify.cram_lookup("tim@a.example", client_ip="192.0.2.1")
    assert lookup.reason == Reason.SUCCESS
    assert lookup.check(challenge, _cram_digest("tanstaaf-tanstaaf-Bramble-6", challenge))
    assert not lookup.check(challenge, _cram_digest("wrong", challenge))
    mailbox.refresh_from_db()
    assert mailbox.last_login_mechanism == "CRAM-MD5"
    # Unknown users: the check runs and fails.
    ghost = verify.cram_lookup("ghost@a.example")
    assert ghost.reason == Reason.UNKNOWN_USER and not ghost.check(challenge, "00" * 16)


def test_cram_md5_transition_and_disabled_domain(domain_a, mailbox_a):
    assert not verify.cram_md5_enabled_anywhere()
    assert verify.cram_lookup("alice@a.example").reason == Reason.BAD_CREDENTIALS  # CRAM off for the domain
    domain_a.cram_md5_enabled = True
    domain_a.save()
    assert verify.cram_lookup("alice@a.example").reason == Reason.TRANSITION_NEEDED
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    lookup = verify.cram_lookup("alice@a.example")
    assert lookup.reason == Reason.SUCCESS
    assert lookup.check(b"<1@x>", _cram_digest(GOOD_PASSWORD, b"<1@x>"))


def test_cram_md5_without_keys_is_a_temporary_failure(domain_a, mailbox_a, settings):
    domain_a.cram_md5_enabled = True
    domain_a.save()
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    settings.CREDENTIAL_ENCRYPTION_KEYS = []
    assert verify.cram_lookup("alice@a.example").reason == Reason.TEMP_FAILURE


def test_cram_state_is_the_hmac_md5_state(domain_a, make_mailbox):
    domain_a.cram_md5_enabled = True
    domain_a.save()
    mailbox = make_mailbox(domain_a, "tim", password="tanstaaf-tanstaaf-Bramble-6")
    state = credentials.decrypt_cram_state(mailbox.cram_md5_state)
    assert state == md5state.hmac_md5_state(b"tanstaaf-tanstaaf-Bramble-6")


def test_cached_success_costs_one_query(mailbox_a, django_assert_num_queries):
    assert verify_password("alice@a.example", GOOD_PASSWORD, client_ip="192.0.2.1").ok
    with django_assert_num_queries(1):
        assert verify_password("alice@a.example", GOOD_PASSWORD, client_ip="192.0.2.1").ok


def test_mailbox_lookup_matches_the_orm(domain_a, domain_b, make_mailbox):
    """The one-statement lookup on the AUTH path returns what the ORM returns:
    every field, the domain, and the maximum password age in force."""
    from django.db.models import OuterRef, Subquery, Value
    from django.db.models.functions import Coalesce, Lower

    make_mailbox(domain_a, "Alice")
    make_mailbox(domain_b, "bob")
    suspend(Mailbox.objects.get(local_part="bob"), "phished")

    def orm(domain_name, local):
        domain_policy = PasswordPolicy.objects.filter(domain=OuterRef("domain")).values("max_age_days")[:1]
        global_policy = PasswordPolicy.objects.filter(domain__isnull=True).values("max_age_days")[:1]
        return (
            Mailbox.objects.select_related("domain")
            .annotate(
                local_lower=Lower("local_part"),
                policy_max_age_days=Coalesce(Subquery(domain_policy), Subquery(global_policy), Value(0)),
            )
            .filter(domain__name=domain_name, local_lower=local.lower())
            .first()
        )

    def same(domain_name, local):
        expected, got = orm(domain_name, local), verify._find_mailbox(f"{local}@{domain_name}")
        if expected is None:
            return got is None
        fields = [f.attname for f in Mailbox._meta.concrete_fields]
        domain_fields = [f.attname for f in type(expected.domain)._meta.concrete_fields]
        return (
            [getattr(got, f) for f in fields] == [getattr(expected, f) for f in fields]
            and [getattr(got.domain, f) for f in domain_fields] == [getattr(expected.domain, f) for f in domain_fields]
            and got.policy_max_age_days == expected.policy_max_age_days
            and got.address == expected.address
        )

    cases = [("a.example", "alice"), ("a.example", "ALICE"), ("b.example", "bob"), ("a.example", "nobody")]
    assert all(same(*case) for case in cases)
    PasswordPolicy.objects.update_or_create(domain=None, defaults={"max_age_days": 30})
    assert all(same(*case) for case in cases)
    PasswordPolicy.objects.create(domain=domain_a, max_age_days=10)
    assert all(same(*case) for case in cases)
    assert verify._find_mailbox("alice@a.example").policy_max_age_days == 10
    assert verify._find_mailbox("bob@b.example").policy_max_age_days == 30


def test_domain_policy_max_age_is_used(mailbox_a, domain_a):
    PasswordPolicy.objects.create(domain=domain_a, max_age_days=10)
    Mailbox.objects.filter(pk=mailbox_a.pk).update(password_changed_at=timezone.now() - timedelta(days=11))
    assert verify_password("alice@a.example", GOOD_PASSWORD).reason == Reason.EXPIRED


@pytest.mark.django_db(transaction=True)
def test_concurrent_verifications_from_threads(domain_a, make_mailbox, settings):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    settings.VERIFY_CONCURRENCY = 2
    make_mailbox(domain_a, "alice")

    def attempt(i):
        try:
            secret = GOOD_PASSWORD if i % 2 == 0 else f"wrong guess number {i}"
            return verify_password("alice@a.example", secret, client_ip=f"192.0.2.{i}").reason
        finally:
            connections.close_all()

    with ThreadPoolExecutor(8) as pool:
        reasons = list(pool.map(attempt, range(16)))
    assert reasons.count(Reason.SUCCESS) == 8 and reasons.count(Reason.BAD_CREDENTIALS) == 8


def test_cache_only_answers_only_cached_successes_and_every_change_counts(mailbox_a, django_assert_num_queries):
    """The smtpd's fast path: never hashes; any change still takes effect at once."""
    assert not verify.probably_cached("alice@a.example", GOOD_PASSWORD)
    assert verify_password("alice@a.example", GOOD_PASSWORD, cache_only=True) is None  # nothing cached yet
    assert verify_password("alice@a.example", GOOD_PASSWORD).ok
    assert verify.probably_cached("ALICE@A.Example", GOOD_PASSWORD)
    assert not verify.probably_cached("alice@a.example", "wrong password entirely")
    with django_assert_num_queries(1):
        assert verify_password("alice@a.example", GOOD_PASSWORD, cache_only=True).ok
    assert verify_password("alice@a.example", "wrong password entirely", cache_only=True) is None
    assert verify_password("nobody@a.example", GOOD_PASSWORD, cache_only=True) is None
    suspend(mailbox_a, "phished")
    assert verify_password("alice@a.example", GOOD_PASSWORD, cache_only=True).reason == Reason.SUSPENDED
    Mailbox.objects.filter(pk=mailbox_a.pk).update(state=Mailbox.State.ACTIVE)
    credentials.set_password(Mailbox.objects.get(pk=mailbox_a.pk), NEW_PASSWORD, enforce_policy=False)
    # The hint is stale, the stored hash changed: no answer from the cache, the full check decides.
    assert verify.probably_cached("alice@a.example", GOOD_PASSWORD)
    assert verify_password("alice@a.example", GOOD_PASSWORD, cache_only=True) is None
    assert verify_password("alice@a.example", GOOD_PASSWORD).reason == Reason.BAD_CREDENTIALS
