"""Small helpers shared by the monitoring views: write checks, CSV, scoping of usernames."""

from __future__ import annotations

import csv

from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse

from mailadmin.monitoring.models import domain_of

# Cells starting with these are formulas to a spreadsheet; attackers choose usernames and EHLO names.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def require_write(request):
    """Auditors (and inactive users) are read-only: any write is a 403."""
    if not getattr(request.user, "can_write", False):
        raise PermissionDenied("Read-only role")


def require_superadmin(request):
    """Server-wide things (IP and prefix blocks, the allowlist, detector settings)."""
    if not getattr(request.user, "is_superadmin", False):
        raise PermissionDenied("Superadmins only")


def user_sees_username(user, username: str) -> bool:
    """May this staff user see data about this mailbox address? (Same rule as ScopedQuerySet.)"""
    if getattr(user, "sees_all_domains", False):
        return True
    domain = domain_of(username)
    return bool(domain) and user.domains.filter(name__iexact=domain).exists()


def user_writes_username(user, username: str) -> bool:
    return getattr(user, "can_write", False) and user_sees_username(user, username)


def safe_cell(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


class _Echo:
    def write(self, value):
        return value


def stream_csv(filename: str, header: list[str], rows) -> StreamingHttpResponse:
    """Stream rows (any iterable, e.g. a queryset iterator) as CSV without holding them in memory."""
    writer = csv.writer(_Echo())

    def generate():
        yield writer.writerow(header)
        for row in rows:
            yield writer.writerow([safe_cell(v) for v in row])

    response = StreamingHttpResponse(generate(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


def find_mailbox(username: str, queryset_method: str, user):
    """The accounts app's Mailbox for an address, scoped (None if the model or mailbox is absent)."""
    from django.apps import apps

    try:
        Mailbox = apps.get_model("accounts", "Mailbox")
    except LookupError:
        return None
    if "@" not in username:
        return None
    local, domain = username.rsplit("@", 1)
    return (
        getattr(Mailbox.objects, queryset_method)(user)
        .filter(domain__name__iexact=domain, local_part__iexact=local)
        .select_related("domain")
        .first()
    )
