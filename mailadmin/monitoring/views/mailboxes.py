"""Mailbox security view: login history, places and clients seen, credentials, alerts, blocks, suspend."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count, Max, Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from mailadmin.monitoring import charts
from mailadmin.monitoring.models import Alert, AuthEvent, Block, Result
from mailadmin.monitoring.views.common import find_mailbox, require_write, user_sees_username
from mailadmin.staff import audit

HISTORY_DAYS = 90


def _get_username_for_user(request, username: str) -> str:
    """The normalised address, or 404 when it is outside the user's domains."""
    username = (username or "").strip().lower()
    if not user_sees_username(request.user, username):
        raise Http404("No such mailbox in your domains")
    return username


def alerts_about(user, username):
    return Alert.objects.visible_to(user).filter(Q(entity__username=username) | Q(entity_key__endswith=username))


def suspend_mailbox(request, username: str, reason: str) -> str | None:
    """Suspend the accounts app's mailbox (audited). Returns an error message or None."""
    require_write(request)
    mailbox = find_mailbox(username, "writable_by", request.user)
    if mailbox is None:
        return f"There is no mailbox {username} to suspend."
    if mailbox.state == mailbox.State.SUSPENDED:
        return None
    before = audit.snapshot(mailbox)
    mailbox.state = mailbox.State.SUSPENDED
    mailbox.suspend_reason = reason[:255]
    mailbox.save(update_fields=["state", "suspend_reason", "updated"])
    audit.record(
        request,
        "update",
        mailbox,
        changes=audit.diff(before, audit.snapshot(mailbox)),
        object_repr=f"suspend {username}",
    )
    return None


@login_required
def mailbox_security(request, username):
    username = _get_username_for_user(request, username)
    events = AuthEvent.objects.visible_to(request.user).filter(username=username)
    since = timezone.now() - dt.timedelta(days=HISTORY_DAYS)
    recent = events.filter(ts__gte=since)
    ok = Count("id", filter=Q(result=Result.SUCCESS))
    places = (
        recent.values("country", "asn", "as_name")
        .annotate(n=Count("id"), ok=ok, last=Max("ts"))
        .order_by("-ok", "-n")[:30]
    )
    clients = recent.values("helo", "mechanism").annotate(n=Count("id"), ok=ok, last=Max("ts")).order_by("-n")[:30]
    mailbox = find_mailbox(username, "visible_to", request.user)
    app_passwords = (
        list(mailbox.app_passwords.all()) if mailbox is not None and hasattr(mailbox, "app_passwords") else []
    )
    tr = charts.around(since, timezone.now(), dt.timedelta(0))
    context = {
        "username": username,
        "mailbox": mailbox,
        "app_passwords": app_passwords,
        "events": list(events.order_by("-ts", "-id")[:50]),
        "places": places,
        "clients": clients,
        "alerts": alerts_about(request.user, username).order_by("-last_seen")[:50],
        "blocks": Block.objects.visible_to(request.user).filter(username=username).order_by("-created")[:50],
        "chart_data": {"timeline": charts.events_timeline(events, tr).as_json(tr)},
        "now": timezone.now(),
        "days": HISTORY_DAYS,
        "can_suspend": request.user.can_write and mailbox is not None,
    }
    return render(request, "monitoring/mailbox.html", context)


@login_required
@require_POST
def mailbox_suspend(request, username):
    username = _get_username_for_user(request, username)
    error = suspend_mailbox(request, username, request.POST.get("reason") or "suspended from the security view")
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"{username} is suspended.")
    return redirect("monitoring:mailbox", username)
