"""IP / prefix view: attempts from an address or network, users tried, blocks, actions."""

from __future__ import annotations

import datetime as dt
import ipaddress

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.db.models import Count, Max, Min, Q
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from mailadmin.monitoring import blocks as block_engine
from mailadmin.monitoring import charts
from mailadmin.monitoring.blocks import prefix_of
from mailadmin.monitoring.models import AuthEvent, Block, Result
from mailadmin.monitoring.views.blocks import MAX_BLOCK_HOURS, create_manual_block, safe_next
from mailadmin.monitoring.views.common import require_superadmin

SUMMARY_DAYS = 30


def parse_target(text: str):
    """An IP address or a CIDR network (ValueError for anything else)."""
    text = (text or "").strip()
    if "/" in text:
        net = ipaddress.ip_network(text, strict=False)
        return net.network_address if net.num_addresses == 1 else net
    return ipaddress.ip_address(text)


def events_for(user, target):
    qs = AuthEvent.objects.visible_to(user)
    if isinstance(target, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return qs.filter(client_ip=str(target))
    if str(target) == prefix_of(str(target.network_address)):
        return qs.filter(prefix=str(target))
    if connection.vendor != "postgresql":
        raise ValueError("Arbitrary networks need PostgreSQL; use one address or its /24 or /64.")
    return qs.filter(client_ip__net_within=str(target))


def blocks_for(user, target):
    qs = Block.objects.visible_to(user)
    if isinstance(target, ipaddress.IPv4Address | ipaddress.IPv6Address):
        ip = str(target)
        return qs.filter(Q(value=ip) | Q(kind=Block.Kind.PREFIX, value=prefix_of(ip)))
    return qs.filter(kind=Block.Kind.PREFIX, value=str(target))


@login_required
def ip_detail(request, target):
    try:
        parsed = parse_target(target)
        events = events_for(request.user, parsed)
    except ValueError as exc:
        message = str(exc) if "PostgreSQL" in str(exc) else f"“{target[:60]}” is not an IP address or network."
        return render(request, "monitoring/ip.html", {"error": message, "target": target}, status=400)
    since = timezone.now() - dt.timedelta(days=SUMMARY_DAYS)
    recent = events.filter(ts__gte=since)
    summary = recent.aggregate(
        attempts=Count("id"),
        failures=Count("id", filter=~Q(result=Result.SUCCESS)),
        first=Min("ts"),
        last=Max("ts"),
    )
    by_result = recent.values("result").annotate(n=Count("id")).order_by("-n")
    users = (
        recent.exclude(username="")
        .values("username")
        .annotate(n=Count("id"), ok=Count("id", filter=Q(result=Result.SUCCESS)))
        .order_by("-n", "username")[:25]
    )
    place = events.order_by("-ts").values("country", "city", "asn", "as_name", "network_name").first()
    tr = charts.around(since, timezone.now(), dt.timedelta(0))
    timeline = charts.events_timeline(events, tr)
    is_single = isinstance(parsed, ipaddress.IPv4Address | ipaddress.IPv6Address)
    context = {
        "target": str(parsed),
        "is_single": is_single,
        "prefix": prefix_of(str(parsed)) if is_single else str(parsed),
        "summary": summary,
        "by_result": by_result,
        "users": users,
        "place": place,
        "events": list(events.order_by("-ts", "-id")[:50]),
        "blocks": blocks_for(request.user, parsed).order_by("-created")[:50],
        "allowlisted": block_engine.is_allowlisted(str(parsed if is_single else parsed.network_address)),
        "chart_data": {"timeline": timeline.as_json(tr)},
        "now": timezone.now(),
        "days": SUMMARY_DAYS,
    }
    return render(request, "monitoring/ip.html", context)


@login_required
@require_POST
def ip_block(request, target):
    """One-click block of an address (or network) — server-wide, so superadmins only."""
    require_superadmin(request)
    try:
        parsed = parse_target(target)
    except ValueError:
        messages.error(request, f"“{target[:60]}” is not an IP address or network.")
        return redirect("monitoring:blocks")
    try:
        hours = min(max(int(request.POST.get("hours", 24)), 1), MAX_BLOCK_HOURS)
    except ValueError:
        hours = 24
    kind = Block.Kind.IP if isinstance(parsed, ipaddress.IPv4Address | ipaddress.IPv6Address) else Block.Kind.PREFIX
    block, error = create_manual_block(
        request, kind=kind, value=str(parsed), hours=hours, reason=request.POST.get("reason", "")[:200]
    )
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Blocked {parsed} for {hours} hours.")
    return redirect(safe_next(request, reverse("monitoring:ip", args=[str(parsed)])))
