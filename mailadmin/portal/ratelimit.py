"""Sign-in throttle for the owner portal, counted in the shared Django cache.

Failures are counted per client IP and per address. The per-address counter is
cleared when that address signs in successfully; the per-IP counter is never
cleared by a success (an attacker holding one valid mailbox must not be able to
reset the counter of the IP they are guessing other mailboxes from).
"""

import hashlib

from django.conf import settings
from django.core.cache import cache


def _key(scope: str, value: str) -> str:
    digest = hashlib.sha256(value.casefold().encode("utf-8")).hexdigest()[:32]
    return f"portal:login:{scope}:{digest}"


def _count(key: str) -> int:
    return int(cache.get(key) or 0)


def is_limited(client_ip: str, address: str) -> bool:
    return (
        _count(_key("ip", client_ip)) >= settings.PORTAL_LOGIN_LIMIT_PER_IP
        or _count(_key("addr", address)) >= settings.PORTAL_LOGIN_LIMIT_PER_ADDRESS
    )


def _bump(key: str) -> None:
    window = settings.PORTAL_LOGIN_WINDOW_SECONDS
    # add() starts the window; incr() never extends it.
    if not cache.add(key, 1, timeout=window):
        try:
            cache.incr(key)
        except ValueError:  # expired between add() and incr()
            cache.add(key, 1, timeout=window)


def record_failure(client_ip: str, address: str) -> None:
    _bump(_key("ip", client_ip))
    _bump(_key("addr", address))


def record_success(address: str) -> None:
    cache.delete(_key("addr", address))
