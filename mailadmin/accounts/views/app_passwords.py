"""App passwords of a mailbox: create (the secret is shown once) and revoke.
Listed on the mailbox page. Scoping through the mailbox (404 outside scope, 403 for auditors)."""

import datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from mailadmin.accounts import credentials
from mailadmin.accounts.forms_mailboxes import AppPasswordForm
from mailadmin.accounts.models import AppPassword
from mailadmin.accounts.views.mailboxes import _get_mailbox_for_user
from mailadmin.staff import audit


def _get_app_password_for_user(request, mailbox_pk, pk, *, write=False) -> AppPassword:
    mailbox = _get_mailbox_for_user(request, mailbox_pk, write=write)
    try:
        return mailbox.app_passwords.select_related("mailbox__domain").get(pk=pk)
    except AppPassword.DoesNotExist:
        raise Http404("No such app password") from None


@never_cache
@login_required
def app_password_create(request, pk):
    mailbox = _get_mailbox_for_user(request, pk, write=True)
    form = AppPasswordForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        expires_at = None
        if data["expires_on"]:
            expires_at = timezone.make_aware(datetime.datetime.combine(data["expires_on"], datetime.time.min))
        try:
            app, secret = credentials.create_app_password(
                mailbox, data["name"], expires_at=expires_at, allowed_networks=data["allowed_networks"]
            )
        except ValidationError as exc:
            for message in exc.messages:
                form.add_error(None, message)
        else:
            audit.record(
                request,
                "create",
                app,
                object_kind="apppassword",
                changes={
                    "name": [None, app.name],
                    "expires_at": [None, audit._plain(app.expires_at)],
                    "allowed_networks": [None, app.allowed_networks],
                    "password": 1,
                },
            )
            response = render(
                request,
                "accounts/mailboxes/app_password_shown.html",
                {"mailbox": mailbox, "app": app, "secret": secret},
            )
            response["Cache-Control"] = "no-store"
            return response
    return render(
        request,
        "accounts/mailboxes/form.html",
        {"form": form, "title": f"New app password for {mailbox}", "mailbox": mailbox},
    )


@require_POST
@login_required
def app_password_revoke(request, pk, app_pk):
    app = _get_app_password_for_user(request, pk, app_pk, write=True)
    if credentials.revoke_app_password(app):
        audit.record(request, "update", app, changes={"revoked_at": [None, audit._plain(app.revoked_at)]})
        messages.success(request, f"Revoked the app password {app.name!r}; it stops working at once.")
    else:
        messages.info(request, f"The app password {app.name!r} was already revoked.")
    return redirect(app.mailbox)
