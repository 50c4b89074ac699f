"""The audit log page and its CSV export, both scoped by AuditEntry.objects.visible_to."""

import csv
import json

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone

from mailadmin.staff.forms import AuditFilterForm
from mailadmin.staff.models import AuditEntry

PAGE_SIZE = 50
CSV_COLUMNS = ["time", "actor", "action", "object_kind", "object_id", "object", "domain", "client_ip", "changes"]


def _filtered_entries(request):
    """(form, queryset) — the queryset is empty when a filter value is invalid, so a
    typo never silently shows more than was asked for."""
    form = AuditFilterForm(request.GET or None)
    entries = AuditEntry.objects.visible_to(request.user)
    if form.is_bound:
        entries = form.apply(entries) if form.is_valid() else entries.none()
    return form, entries


@login_required
def audit_log(request):
    form, entries = _filtered_entries(request)
    page = Paginator(entries.select_related("actor"), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "staff/audit_log.html", {"form": form, "page": page})


class _Echo:
    def write(self, value):
        return value


def _cell(value) -> str:
    # Spreadsheets run cells starting with these as formulas (CSV injection).
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _rows(entries):
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for entry in entries.iterator(chunk_size=2000):
        yield writer.writerow(
            [
                _cell(entry.created.isoformat()),
                _cell(entry.actor_email),
                _cell(entry.action),
                _cell(entry.object_kind),
                _cell(entry.object_id),
                _cell(entry.object_repr),
                _cell(entry.domain_name),
                _cell(entry.client_ip),
                _cell(json.dumps(entry.changes, sort_keys=True, ensure_ascii=False)),
            ]
        )


@login_required
def audit_export(request):
    form, entries = _filtered_entries(request)
    if form.is_bound and not form.is_valid():
        problems = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())
        return HttpResponse(f"Invalid filter: {problems}\n", status=400, content_type="text/plain; charset=utf-8")
    response = StreamingHttpResponse(_rows(entries), content_type="text/csv; charset=utf-8")
    filename = f"mailadmin-audit-{timezone.now():%Y%m%d-%H%M%S}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
