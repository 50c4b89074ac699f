"""TOTP and recovery-code seeds are sealed at rest (mailadmin/secretbox.py): staff
authenticators through allauth's MFA adapter, owners' portal TOTP through the model,
rotation re-seals them, and legacy clear values get sealed by the data migration."""

import pytest
from allauth.mfa.models import Authenticator
from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from mailadmin import secretbox
from mailadmin.accounts.models import Mailbox
from mailadmin.portal.models import OwnerSettings
from mailadmin.staff.accounts import create_staff
from mailadmin.staff.models import Role
from tests.conftest import add_totp


@pytest.fixture
def staff_user(db):
    user, _ = create_staff("sealed@staff.example", role=Role.SUPERADMIN)
    return user


@pytest.fixture
def owner_settings(db, domain_a):
    mailbox = Mailbox.objects.create(domain=domain_a, local_part="alice")
    owner = OwnerSettings(mailbox=mailbox)
    owner.totp_key = generate_totp_secret()
    owner.save()
    return owner


def _database_dump() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT data::text FROM mfa_authenticator")
        rows = [r[0] for r in cursor.fetchall()]
        cursor.execute("SELECT totp_secret FROM portal_ownersettings")
        rows += [r[0] for r in cursor.fetchall()]
    return "\n".join(rows)


def test_staff_totp_and_recovery_seeds_are_sealed_and_still_work(staff_user):
    secret = add_totp(staff_user)
    codes = RecoveryCodes.activate(staff_user)
    stored = _database_dump()
    assert secret not in stored
    assert codes.instance.data["seed"].startswith(secretbox.PREFIX)
    # allauth reads them back through the adapter: a current code validates, recovery codes work.
    totp = TOTP(Authenticator.objects.get(user=staff_user, type="totp"))
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time

    code = format_hotp_value(hotp_value(secret, next(iter(yield_hotp_counters_from_time()))))
    assert totp.validate_code(code)
    first = codes.get_unused_codes()[0]
    assert RecoveryCodes(Authenticator.objects.get(user=staff_user, type="recovery_codes")).validate_code(first)


def test_owner_totp_is_sealed(owner_settings):
    secret = owner_settings.totp_key
    assert owner_settings.totp_secret.startswith(secretbox.PREFIX)
    assert secret not in _database_dump()
    assert OwnerSettings.objects.get(pk=owner_settings.pk).totp_key == secret


def test_rotation_reseals_under_the_new_key_and_the_old_key_can_go(settings, staff_user, owner_settings):
    staff_secret = add_totp(staff_user)
    owner_secret = owner_settings.totp_key
    new_key = Fernet.generate_key().decode()
    settings.CREDENTIAL_ENCRYPTION_KEYS = [new_key, *settings.CREDENTIAL_ENCRYPTION_KEYS]
    call_command("rotate_credential_keys")
    # Only the new key and nothing derived from SECRET_KEY: still readable, so they were re-sealed.
    settings.CREDENTIAL_ENCRYPTION_KEYS = [new_key]
    settings.SECRET_KEY = "another-secret-key-for-this-test-0123456789abcdef"
    assert OwnerSettings.objects.get(pk=owner_settings.pk).totp_key == owner_secret
    stored = Authenticator.objects.get(user=staff_user, type="totp").data["secret"]
    assert secretbox.unseal(stored) == staff_secret


def test_sealed_values_survive_a_secret_key_rotation_with_fallbacks(settings, owner_settings):
    settings.CREDENTIAL_ENCRYPTION_KEYS = []
    owner = OwnerSettings.objects.get(pk=owner_settings.pk)
    secret = owner.totp_key
    owner.totp_key = secret  # sealed under the SECRET_KEY-derived key now
    old = settings.SECRET_KEY
    settings.SECRET_KEY = "a-brand-new-secret-key-0123456789abcdefghij"
    settings.SECRET_KEY_FALLBACKS = [old]
    assert owner.totp_key == secret
    settings.SECRET_KEY_FALLBACKS = []
    with pytest.raises(secretbox.SecretUnreadable):
        owner.totp_key  # noqa: B018 - the read is the test


def test_legacy_clear_values_are_sealed_by_the_migration_helper(staff_user, owner_settings):
    secret = generate_totp_secret()
    Authenticator.objects.create(user=staff_user, type="totp", data={"secret": secret})
    OwnerSettings.objects.filter(pk=owner_settings.pk).update(totp_secret="JBSWY3DPEHPK3PXP")
    done, unreadable = secretbox.reseal_stored_secrets(Authenticator, OwnerSettings)
    assert (done, unreadable) == (2, 0)
    assert secret not in _database_dump() and "JBSWY3DPEHPK3PXP" not in _database_dump()
    assert OwnerSettings.objects.get(pk=owner_settings.pk).totp_key == "JBSWY3DPEHPK3PXP"
