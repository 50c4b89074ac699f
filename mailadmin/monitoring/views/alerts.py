"""Alert inbox: filters by severity and status, detail with evidence and timeline, actions (audited)."""

from __future__ import annotations

import datetime as dt

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Case, IntegerField, Value, When
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from mailadmin.monitoring import charts
from mailadmin.monitoring.models import Alert, AuthEvent, Block, Severity
from mailadmin.monitoring.views.blocks import MAX_BLOCK_HOURS, create_manual_block, lift, safe_next
from mailadmin.monitoring.views.common import require_write, user_writes_username
from mailadmin.monitoring.views.mailboxes import suspend_mailbox
from mailadmin.staff import audit

STATUS_FILTERS = {
    "live": [Alert.Status.OPEN, Alert.Status.ACKNOWLEDGED],
    "open": [Alert.Status.OPEN],
    "acknowledged": [Alert.Status.ACKNOWLEDGED],
    "resolved": [Alert.Status.RESOLVED],
    "safe": [Alert.Status.SAFE],
    "all": None,
}
# action → (statuses it applies to, new status)
STATUS_ACTIONS = {
    "acknowledge": ([Alert.Status.OPEN], Alert.Status.ACKNOWLEDGED),
    "resolve": ([Alert.Status.OPEN, Alert.Status.ACKNOWLEDGED], Alert.Status.RESOLVED),
    "safe": ([Alert.Status.OPEN, Alert.Status.ACKNOWLEDGED, Alert.Status.RESOLVED], Alert.Status.SAFE),
}
SEVERITY_ORDER = Case(
    *[When(severity=s, then=Value(i)) for i, s in enumerate(["critical", "high", "medium", "low"])],
    output_field=IntegerField(),
)


def _get_alert_for_user(request, pk, *, write=False):
    if write:
        require_write(request)
        return get_object_or_404(Alert.objects.writable_by(request.user), pk=pk)
    return get_object_or_404(Alert.objects.visible_to(request.user), pk=pk)


def alert_events(user, alert):
    """The attempts behind an alert (scoped): by its IP, prefix or username."""
    entity = alert.entity or {}
    events = AuthEvent.objects.visible_to(user)
    if entity.get("ip"):
        events = events.filter(client_ip=entity["ip"])
    elif entity.get("prefix"):
        events = events.filter(prefix=entity["prefix"])
    if entity.get("username"):
        events = events.filter(username=entity["username"])
    if not any(entity.get(k) for k in ("ip", "prefix", "username")):
        events = events.none() if not charts.sees_everything(user) else events
    return events


def evidence_table(evidence) -> dict:
    """Evidence samples (dicts, maybe with different keys) as columns and rows."""
    samples = [e for e in (evidence if isinstance(evidence, list) else []) if isinstance(e, dict)]
    columns = list(dict.fromkeys(k for e in samples for k in e))
    return {"evidence_columns": columns, "evidence_rows": [[e.get(c, "") for c in columns] for e in samples]}


def alert_range(alert):
    margin = dt.timedelta(seconds=max(alert.window_seconds, 600))
    return charts.around(alert.first_seen, alert.last_seen, margin)


def change_status(request, alert, action) -> bool:
    allowed_from, new_status = STATUS_ACTIONS[action]
    if alert.status not in allowed_from:
        return False
    before = audit.snapshot(alert)
    if new_status == Alert.Status.SAFE:
        # The model lifts the alert's blocks and teaches the user's baseline or the allowlist.
        learned = alert.mark_safe(by=request.user.email)
        if learned is not None:
            audit.record(request, "create", learned, changes=audit.diff(None, audit.snapshot(learned)))
    else:
        alert.set_status(new_status, by=request.user.email)
    audit.record(
        request, "update", alert, changes=audit.diff(before, audit.snapshot(alert)), object_repr=f"{action} {alert}"
    )
    return True


@login_required
def alert_list(request):
    status = request.GET.get("status", "live")
    severity = request.GET.get("severity", "")
    qs = Alert.objects.visible_to(request.user)
    if STATUS_FILTERS.get(status, "bad") == "bad":
        messages.warning(request, "Unknown status filter; showing open and acknowledged alerts.")
        status = "live"
    if STATUS_FILTERS[status] is not None:
        qs = qs.filter(status__in=STATUS_FILTERS[status])
    if severity and severity not in Severity.values:
        messages.warning(request, "Unknown severity filter; showing every severity.")
        severity = ""
    if severity:
        qs = qs.filter(severity=severity)
    qs = qs.annotate(sev_order=SEVERITY_ORDER).order_by("sev_order", "-last_seen", "-id")
    page = Paginator(qs, 50).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "status": status,
        "severity": severity,
        "statuses": list(STATUS_FILTERS),
        "severities": Severity.values,
    }
    return render(request, "monitoring/alerts.html", context)


@login_required
def alert_detail(request, pk):
    alert = _get_alert_for_user(request, pk)
    tr = alert_range(alert)
    events = alert_events(request.user, alert)
    entity = alert.entity or {}
    username = entity.get("username", "")
    context = {
        "alert": alert,
        "entity": entity,
        **evidence_table(alert.evidence),
        "blocks": alert.blocks.all().order_by("-created"),
        "chart_data": {"timeline": charts.events_timeline(events, tr).as_json(tr)},
        "now": timezone.now(),
        "can_write": request.user.can_write,
        "can_block_ip": request.user.is_superadmin and entity.get("ip"),
        "can_block_pair": bool(entity.get("ip") and username and user_writes_username(request.user, username)),
        "can_suspend": bool(username and user_writes_username(request.user, username)),
    }
    return render(request, "monitoring/alert_detail.html", context)


@login_required
def alert_timeline_json(request, pk):
    alert = _get_alert_for_user(request, pk)
    tr = alert_range(alert)
    return JsonResponse(charts.events_timeline(alert_events(request.user, alert), tr).as_json(tr))


@login_required
@require_POST
def alert_action(request, pk):
    alert = _get_alert_for_user(request, pk, write=True)
    action = request.POST.get("action", "")
    entity = alert.entity or {}
    back = safe_next(request, alert.get_absolute_url())
    if action in STATUS_ACTIONS:
        if change_status(request, alert, action):
            messages.success(request, f"Alert {action}d." if action != "safe" else "Alert marked safe.")
        else:
            messages.info(request, f"The alert is {alert.status}; nothing changed.")
    elif action == "suspend":
        username = entity.get("username", "")
        if not (username and user_writes_username(request.user, username)):
            raise PermissionDenied("No mailbox of yours in this alert")
        error = suspend_mailbox(request, username, f"suspended from alert {alert.pk} ({alert.rule})")
        if error:
            messages.error(request, error)
        else:
            _record_action(request, alert, f"mailbox {username} suspended by {request.user.email}")
            messages.success(request, f"{username} is suspended.")
    elif action in ("block", "block_pair"):
        _block_from_alert(request, alert, action)
    elif action == "unblock":
        lifted = 0
        for block in Block.objects.writable_by(request.user).filter(alert=alert).active():
            if block.kind == Block.Kind.IP_USER or request.user.is_superadmin:
                lift(request, block)
                lifted += 1
        if lifted:
            _record_action(request, alert, f"unblocked by {request.user.email}")
        messages.success(request, f"{lifted} block(s) lifted.")
    else:
        messages.error(request, "Unknown action.")
    return redirect(back)


def _record_action(request, alert, text):
    before = audit.snapshot(alert)
    alert.action = text[:255]
    alert.save(update_fields=["action"])
    audit.record(
        request, "update", alert, changes=audit.diff(before, audit.snapshot(alert)), object_repr=f"action on {alert}"
    )


def _block_from_alert(request, alert, action):
    entity = alert.entity or {}
    ip, username = entity.get("ip", ""), entity.get("username", "")
    try:
        hours = min(max(int(request.POST.get("hours", 24)), 1), MAX_BLOCK_HOURS)
    except ValueError:
        hours = 24
    if action == "block":
        if not request.user.is_superadmin:
            raise PermissionDenied("Server-wide blocks are for superadmins")
        if not ip:
            messages.error(request, "This alert names no IP address to block.")
            return
        kind, user_part = Block.Kind.IP, ""
    else:
        if not (ip and username and user_writes_username(request.user, username)):
            raise PermissionDenied("No IP + mailbox of yours in this alert")
        kind, user_part = Block.Kind.IP_USER, username
    block, error = create_manual_block(
        request,
        kind=kind,
        value=ip,
        username=user_part,
        hours=hours,
        reason=f"{alert.rule} (alert {alert.pk})",
        alert=alert,
    )
    if error:
        messages.error(request, error)
        return
    _record_action(
        request, alert, f"blocked {block.value} {user_part}".strip() + f" for {hours} h by {request.user.email}"
    )
    messages.success(request, f"Blocked {block.value} {user_part}".strip() + ".")


@login_required
@require_POST
def alert_bulk(request):
    require_write(request)
    action = request.POST.get("action", "")
    if action not in STATUS_ACTIONS:
        messages.error(request, "Choose acknowledge, resolve or mark safe.")
        return redirect(safe_next(request, "monitoring:alerts"))
    ids = [int(i) for i in request.POST.getlist("ids") if i.isdigit()]
    changed = 0
    for alert in Alert.objects.writable_by(request.user).filter(pk__in=ids):
        changed += change_status(request, alert, action)
    messages.success(request, f"{changed} of {len(ids)} selected alert(s) changed.")
    return redirect(safe_next(request, "monitoring:alerts"))
