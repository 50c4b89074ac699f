"""The 12-bit keyed password fingerprint carried by auth events (`pw_fp`).

It lets the detectors tell a stale client (the same wrong password retried)
from guessing (many different passwords) without storing anything that helps
an attacker: 4,096 buckets, keyed with a secret derived from SECRET_KEY, so it
cannot be computed offline or used to test a password.
"""

import hashlib
import hmac

from django.conf import settings
from django.utils.encoding import force_bytes


def _key() -> bytes:
    return hashlib.sha256(b"mailadmin.pw_fp:" + force_bytes(settings.SECRET_KEY)).digest()


def pw_fp(username: str, secret: str | bytes) -> int:
    msg = force_bytes(username.lower()) + b"\x00" + force_bytes(secret)
    return int.from_bytes(hmac.new(_key(), msg, hashlib.sha256).digest()[:2], "big") & 0x0FFF
