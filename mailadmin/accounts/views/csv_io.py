"""CSV import (dry-run preview, then all-or-nothing import) and streamed export.

Between the preview and the import the uploaded file waits in the cache,
encrypted (Fernet, key derived from SECRET_KEY) for 30 minutes and bound to the
user; the result file with generated passwords waits the same way and is
deleted on its first download. Nothing with a password reaches the database.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from mailadmin.accounts import csv_import
from mailadmin.accounts.forms_mailboxes import CsvUploadForm
from mailadmin.accounts.models import Mailbox
from mailadmin.accounts.views.mailboxes import filter_mailboxes, require_writer
from mailadmin.staff import audit

PENDING_SECONDS = 30 * 60


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"mailadmin.csv-import:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _stash(kind: str, user, payload: bytes) -> str:
    token = secrets.token_urlsafe(24)
    cache.set(f"accounts:{kind}:{user.pk}:{token}", _fernet().encrypt(payload), PENDING_SECONDS)
    return token


def _unstash(kind: str, user, token: str, *, delete: bool) -> bytes | None:
    key = f"accounts:{kind}:{user.pk}:{token}"
    blob = cache.get(key)
    if blob is None:
        return None
    if delete:
        cache.delete(key)
    try:
        return _fernet().decrypt(blob, ttl=PENDING_SECONDS)
    except InvalidToken:
        return None


def _human_size(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB" if size >= 1024 * 1024 else f"{size / 1024:.0f} KB"


@never_cache
@login_required
def csv_import_view(request):
    require_writer(request)
    form = CsvUploadForm(request.POST or None, request.FILES or None)
    context = {"form": form, "columns": csv_import.COLUMNS, "limit": _human_size(settings.MAILBOX_CSV_MAX_BYTES)}
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        if upload.size > settings.MAILBOX_CSV_MAX_BYTES:
            form.add_error(
                "file",
                f"The file is {_human_size(upload.size)}; the limit is {_human_size(settings.MAILBOX_CSV_MAX_BYTES)}. "
                "Split it into smaller files.",
            )
            return render(request, "accounts/mailboxes/csv_import.html", context, status=400)
        data = upload.read()
        rows, errors = csv_import.validate(data, request.user)
        context.update(rows=rows, errors=errors, previewed=True, filename=upload.name)
        if not errors:
            context["token"] = _stash("csv", request.user, data)
    return render(request, "accounts/mailboxes/csv_import.html", context)


@never_cache
@require_POST
@login_required
def csv_import_confirm(request):
    require_writer(request)
    data = _unstash("csv", request.user, request.POST.get("token", ""), delete=True)
    if data is None:
        messages.error(request, "The preview has expired or was already imported; upload the file again.")
        return redirect("mailboxes:csv_import")
    # Validate again: mailboxes may have been added since the preview.
    rows, errors = csv_import.validate(data, request.user)
    if not errors:
        try:
            results = csv_import.import_rows(rows)
        except ValidationError as exc:
            errors = [(0, message) for message in exc.messages]
    if errors:
        context = {
            "form": CsvUploadForm(),
            "errors": errors,
            "rows": rows,
            "previewed": True,
            "columns": csv_import.COLUMNS,
        }
        messages.error(request, "Nothing was imported: the file no longer passes the checks.")
        return render(request, "accounts/mailboxes/csv_import.html", context, status=400)
    domains = sorted({row.domain.name for row in rows})
    audit.record(
        request,
        "create",
        None,
        object_kind="mailbox_import",
        object_repr=f"CSV import of {len(results)} mailboxes",
        changes={"addresses": [None, [address for address, _, _ in results]], "domains": [None, domains]},
    )
    token = _stash("csv-result", request.user, csv_import.result_csv(results).encode("utf-8"))
    context = {"results": results, "token": token, "generated": sum(1 for r in results if r[2])}
    response = render(request, "accounts/mailboxes/csv_imported.html", context)
    response["Cache-Control"] = "no-store"
    return response


@never_cache
@login_required
def csv_import_result(request, token):
    data = _unstash("csv-result", request.user, token, delete=True)
    if data is None:
        raise Http404("This file was already downloaded or has expired.")
    response = HttpResponse(data, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="mailbox-passwords.csv"'
    response["Cache-Control"] = "no-store"
    return response


class _Echo:
    def write(self, value):
        return value


@login_required
def csv_export(request):
    queryset, _ = filter_mailboxes(request, Mailbox.objects.visible_to(request.user).select_related("domain"))
    writer = csv.writer(_Echo())
    header = ["address", "display_name", "state", "suspend_reason", "send_rate_per_hour", "created", "last_login_at"]

    def rows():
        yield writer.writerow(header)
        for mailbox in queryset.order_by("domain__name", "local_part").iterator(chunk_size=1000):
            yield writer.writerow(
                [
                    mailbox.unicode_address,
                    mailbox.display_name,
                    mailbox.state,
                    mailbox.suspend_reason,
                    mailbox.send_rate_per_hour or "",
                    mailbox.created.isoformat(),
                    mailbox.last_login_at.isoformat() if mailbox.last_login_at else "",
                ]
            )

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="mailboxes.csv"'
    return response
