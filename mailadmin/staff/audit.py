"""The one way to write the audit log: structured rows, never secrets.

    audit.record(request, "update", domain, changes=audit.diff(before, after_snapshot))

`snapshot(obj)` captures a model's plain fields; `diff` keeps only the fields
that changed. Any field whose name looks secret (password, secret, token,
key, hash, verifier) is recorded only as "(changed)", so no secret reaches the log.
"""

from __future__ import annotations

import datetime
import decimal
import uuid

from django.db import models

from mailadmin.staff.models import AuditEntry

SECRET_MARKERS = ("password", "secret", "token", "key", "hash", "verifier", "salt", "cram", "scram")
REDACTED = "(changed)"


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    if lowered.endswith("_enabled"):
        return False  # an on/off switch such as cram_md5_enabled is never a secret
    return any(marker in lowered for marker in SECRET_MARKERS)


def _plain(value):
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    return value


def snapshot(obj: models.Model) -> dict:
    """Plain, JSON-safe values of a model's concrete fields. Secret fields are left
    out: a caller that changes a secret says so with changes={"password": ...}."""
    return {
        field.name: _plain(getattr(obj, field.attname))
        for field in obj._meta.concrete_fields
        if not field.primary_key
        and not is_secret_field(field.name)
        # Timestamps maintained by Django are noise in a diff.
        and not getattr(field, "auto_now", False)
        and not getattr(field, "auto_now_add", False)
    }


def diff(before: dict | None, after: dict | None) -> dict:
    """{field: [old, new]} for fields that changed; secret fields show only that they changed."""
    before = before or {}
    after = after or {}
    changes = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if is_secret_field(name):
            if old != new:
                changes[name] = [None, REDACTED]
            continue
        if old != new:
            changes[name] = [_plain(old), _plain(new)]
    return changes


def client_ip(request) -> str | None:
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def _domain_of(obj):
    from mailadmin.accounts.models import Domain

    if obj is None:
        return None
    if isinstance(obj, Domain):
        return obj
    domain = getattr(obj, "domain", None)
    return domain if isinstance(domain, Domain) else None


def record(
    request_or_actor,
    action: str,
    obj: models.Model | None = None,
    *,
    changes: dict | None = None,
    object_kind: str | None = None,
    object_id: str | None = None,
    object_repr: str | None = None,
    domain=None,
    actor_email: str | None = None,
) -> AuditEntry:
    """Write one audit row. `request_or_actor` is an HttpRequest, a User, or None (system)."""
    request = request_or_actor if hasattr(request_or_actor, "META") else None
    actor = getattr(request, "user", None) if request is not None else request_or_actor
    if actor is not None and not getattr(actor, "is_authenticated", False):
        actor = None
    domain = domain if domain is not None else _domain_of(obj)
    for name in list((changes or {}).keys()):
        if is_secret_field(name):
            changes[name] = [None, REDACTED]
    return AuditEntry.objects.create(
        actor=actor,
        actor_email=actor_email or (actor.email if actor is not None else "system"),
        action=action,
        object_kind=object_kind or (obj._meta.model_name if obj is not None else ""),
        object_id=object_id or (str(obj.pk) if obj is not None and obj.pk is not None else ""),
        object_repr=(object_repr or (str(obj) if obj is not None else ""))[:255],
        domain=domain,
        domain_name=domain.name if domain is not None else "",
        changes=changes or {},
        client_ip=client_ip(request),
    )
