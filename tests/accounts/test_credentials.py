"""Credential storage: nothing in the database reveals a password; key rotation;
mailbox and alias rules."""

import base64

import pytest
from cryptography.fernet import Fernet
from django.apps import apps
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection

from mailadmin.accounts import credentials, verify
from mailadmin.accounts.mailboxes import add_alias, create_mailbox
from mailadmin.accounts.models import Mailbox

from .conftest import GOOD_PASSWORD, TEST_FERNET_KEY


def _needles(secret: str) -> list[bytes]:
    raw = secret.encode()
    needles = [raw, base64.b64encode(raw), raw.hex().encode()]
    for prefix in (b"\x00alice@a.example\x00", b"alice@a.example\x00", b"\x00alice\x00"):
        needles.append(base64.b64encode(prefix + raw))
    return needles


def _all_rows_as_bytes():
    """Every row of every table, fetched with raw SQL and rendered as text."""
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - table names come from introspection
            for row in cursor.fetchall():
                parts = []
                for value in row:
                    if isinstance(value, memoryview | bytes | bytearray):
                        parts.append(bytes(value))
                        parts.append(bytes(value).hex().encode())
                    else:
                        parts.append(str(value).encode())
                yield table, b"\x1f".join(parts)


def test_no_database_row_contains_a_password(domain_a):
    domain_a.cram_md5_enabled = True
    domain_a.save()
    mailbox, generated = create_mailbox(domain_a, "alice")
    credentials.set_password(mailbox, GOOD_PASSWORD)
    _, app_secret = credentials.create_app_password(mailbox, "phone", allowed_networks="192.0.2.0/24")
    assert verify.verify_password("alice@a.example", GOOD_PASSWORD).ok
    assert verify.verify_password("alice@a.example", app_secret, client_ip="192.0.2.1").ok
    secrets = [GOOD_PASSWORD, generated, app_secret, credentials.normalise_app_password(app_secret)]
    scanned = 0
    for table, row in _all_rows_as_bytes():
        scanned += 1
        for secret in secrets:
            for needle in _needles(secret):
                assert needle not in row, f"{table} holds a password in a recognisable form"
    assert scanned > 5
    mailbox.refresh_from_db()
    assert mailbox.password_hash.startswith("argon2smtp$argon2id$")
    assert mailbox.cram_md5_state and mailbox.has_scram


def test_generated_app_password_shape():
    secret = credentials.generate_app_password()
    groups = secret.split("-")
    assert len(groups) == 4 and all(len(g) == 4 and g.isalpha() and g.islower() for g in groups)
    assert credentials.normalise_app_password(secret.upper().replace("-", " ")) == secret.replace("-", "")
    assert credentials.normalise_app_password("hunter2-is-not-one") is None


def test_rotate_credential_keys(domain_a, make_mailbox, settings):
    domain_a.cram_md5_enabled = True
    domain_a.save()
    mailbox = make_mailbox(domain_a, "alice")
    old_token = mailbox.cram_md5_state
    new_key = Fernet.generate_key().decode()
    settings.CREDENTIAL_ENCRYPTION_KEYS = [new_key, TEST_FERNET_KEY]
    call_command("rotate_credential_keys")
    mailbox.refresh_from_db()
    assert mailbox.cram_md5_state != old_token
    settings.CREDENTIAL_ENCRYPTION_KEYS = [new_key]  # the old key retired
    lookup = verify.cram_lookup("alice@a.example")
    assert lookup.ok


def test_set_password_for_cram_domain_without_keys_is_a_clear_error(domain_a, mailbox_a, settings):
    domain_a.cram_md5_enabled = True
    domain_a.save()
    settings.CREDENTIAL_ENCRYPTION_KEYS = []
    with pytest.raises(credentials.CredentialKeyMissing, match="CREDENTIAL_ENCRYPTION_KEYS"):
        credentials.set_password(Mailbox.objects.get(pk=mailbox_a.pk), "quartz-Lantern-meadow-47-oboe")


def test_mailbox_address_rules(domain_a, make_mailbox):
    make_mailbox(domain_a, "Alice")
    with pytest.raises(ValidationError, match="already exists"):
        create_mailbox(domain_a, "alice", password=GOOD_PASSWORD)
    for bad in ("", "a b", ".alice", "al..ice", 'quo"te', "x" * 65, "a@b"):
        with pytest.raises(ValidationError):
            create_mailbox(domain_a, bad, password=GOOD_PASSWORD)
    mailbox, _ = create_mailbox(domain_a, "jörg", password=GOOD_PASSWORD)  # SMTPUTF8 local part
    assert mailbox.local_part == "jörg"


def test_domain_limit(domain_a, make_mailbox):
    domain_a.max_mailboxes = 1
    domain_a.save()
    make_mailbox(domain_a, "one")
    with pytest.raises(ValidationError, match="limited to 1"):
        create_mailbox(domain_a, "two", password=GOOD_PASSWORD)
    assert Mailbox.objects.filter(domain=domain_a).count() == 1


def test_weak_password_refused_on_create_and_nothing_written(domain_a):
    with pytest.raises(credentials.PasswordRejected) as excinfo:
        create_mailbox(domain_a, "weak", password="password")
    assert len(excinfo.value.messages) >= 2
    assert not Mailbox.objects.filter(local_part="weak").exists()


def test_aliases_never_shadow_mailboxes(domain_a, make_mailbox):
    alice = make_mailbox(domain_a, "alice")
    make_mailbox(domain_a, "bob")
    alias = add_alias(alice, "sales")
    assert alias.address == "sales@a.example"
    with pytest.raises(ValidationError, match="already exists"):
        add_alias(alice, "BOB")
    with pytest.raises(ValidationError, match="already an alias"):
        add_alias(alice, "Sales@A.example")
    with pytest.raises(ValidationError, match="already an alias"):
        create_mailbox(domain_a, "sales", password=GOOD_PASSWORD)
    with pytest.raises(ValidationError, match="not managed"):
        add_alias(alice, "x@elsewhere.example")


def test_models_have_scoping_querysets(superadmin, admin_a, admin_b, auditor, mailbox_a):
    for model in ("Mailbox", "Alias", "AppPassword"):
        manager = apps.get_model("accounts", model).objects
        assert hasattr(manager, "visible_to") and hasattr(manager, "writable_by")
    assert list(Mailbox.objects.visible_to(admin_a)) == [mailbox_a]
    assert list(Mailbox.objects.visible_to(admin_b)) == []
    assert list(Mailbox.objects.visible_to(auditor)) == [mailbox_a]
    assert list(Mailbox.objects.writable_by(auditor)) == []
    assert list(Mailbox.objects.writable_by(superadmin)) == [mailbox_a]


def test_deleting_a_domain_deletes_its_mailboxes(domain_a, mailbox_a):
    add_alias(mailbox_a, "sales")
    credentials.create_app_password(mailbox_a, "phone")
    domain_a.delete()
    assert not Mailbox.objects.exists()
    assert verify.verify_password("alice@a.example", GOOD_PASSWORD).reason == "unknown_user"
