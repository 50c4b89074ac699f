"""Encryption at rest for small secrets the server must read back: TOTP seeds of staff
(allauth) and mailbox owners (portal), and allauth's recovery-code seed.

MultiFernet from the `cryptography` package. New values are sealed under the newest
CREDENTIAL_ENCRYPTION_KEYS key; an installation without those keys (they are only
required once a domain enables CRAM-MD5) seals under a key derived from SECRET_KEY
with HKDF-SHA256. Every configured key, SECRET_KEY and SECRET_KEY_FALLBACKS can open
a value, so adding encryption keys or rotating SECRET_KEY does not lock anyone out;
`manage.py rotate_credential_keys` re-seals everything under the newest key.

Sealed values carry a prefix; a value without it is a legacy clear value (from before
this module) and is returned as is until the data migration or a rotation seals it.
"""

import base64
import functools
import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)
PREFIX = "fernet:"
_HKDF_INFO = b"mailadmin secretbox v1"


class SecretUnreadable(Exception):
    """No configured key opens a sealed value (keys lost or removed too early)."""


def _derived_key(secret_key: str) -> bytes:
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret_key.encode("utf-8"))
    return base64.urlsafe_b64encode(raw)


@functools.lru_cache(maxsize=8)
def _fernet_for(configured: tuple[str, ...], secret_keys: tuple[str, ...]) -> MultiFernet:
    try:
        fernets = [Fernet(key) for key in configured]
    except (ValueError, TypeError):
        raise ImproperlyConfigured("CREDENTIAL_ENCRYPTION_KEYS holds a key that is not a Fernet key") from None
    fernets += [Fernet(_derived_key(key)) for key in secret_keys]
    return MultiFernet(fernets)


def _fernet() -> MultiFernet:
    fallbacks = tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ())
    return _fernet_for(tuple(settings.CREDENTIAL_ENCRYPTION_KEYS), (settings.SECRET_KEY, *fallbacks))


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


def seal(text: str) -> str:
    if not text:
        return ""
    return PREFIX + _fernet().encrypt(text.encode("utf-8")).decode("ascii")


def unseal(value: str) -> str:
    if not value or not is_sealed(value):
        return value
    try:
        return _fernet().decrypt(value[len(PREFIX) :].encode("ascii")).decode("utf-8")
    except InvalidToken:
        log.error(
            "A stored TOTP or recovery secret cannot be decrypted with CREDENTIAL_ENCRYPTION_KEYS, "
            "SECRET_KEY or SECRET_KEY_FALLBACKS: restore the key that sealed it (README: Credential encryption keys)"
        )
        raise SecretUnreadable("stored secret cannot be decrypted with any configured key") from None


def reseal(value: str) -> str:
    """The same secret sealed under the newest key (legacy clear values get sealed)."""
    if not value:
        return value
    if not is_sealed(value):
        return seal(value)
    try:
        return PREFIX + _fernet().rotate(value[len(PREFIX) :].encode("ascii")).decode("ascii")
    except InvalidToken:
        raise SecretUnreadable("stored secret cannot be decrypted with any configured key") from None


def reseal_stored_secrets(authenticator_model, owner_settings_model) -> tuple[int, int]:
    """Seal (or re-seal under the newest key) every stored TOTP and recovery seed.
    Takes the model classes so the data migration can pass its historical models.
    Returns (resealed, unreadable); unreadable values are left untouched and logged."""
    done = unreadable = 0
    for auth in authenticator_model.objects.filter(type__in=["totp", "recovery_codes"]).iterator():
        data = dict(auth.data)
        try:
            for field in ("secret", "seed"):
                if data.get(field):
                    data[field] = reseal(data[field])
            if data.get("migrated_codes"):
                data["migrated_codes"] = [reseal(code) for code in data["migrated_codes"]]
        except SecretUnreadable:
            unreadable += 1
            continue
        authenticator_model.objects.filter(pk=auth.pk).update(data=data)
        done += 1
    for pk, value in owner_settings_model.objects.exclude(totp_secret="").values_list("pk", "totp_secret").iterator():
        try:
            sealed = reseal(value)
        except SecretUnreadable:
            unreadable += 1
            continue
        done += owner_settings_model.objects.filter(pk=pk, totp_secret=value).update(totp_secret=sealed)
    return done, unreadable
