"""Blocks (active/expired, unblock, manual block with expiry) and the allowlist of networks."""

from __future__ import annotations

import datetime as dt
import ipaddress

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import IntegrityError
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from mailadmin.monitoring import blocks as block_engine
from mailadmin.monitoring.models import AllowedNetwork, Block
from mailadmin.monitoring.views.common import require_superadmin, require_write, user_writes_username
from mailadmin.staff import audit

MAX_BLOCK_HOURS = 24 * 365


def _get_block_for_user(request, pk, *, write=False):
    """404 outside the user's scope; auditors get 403 on writes."""
    if write:
        require_write(request)
        return get_object_or_404(Block.objects.writable_by(request.user), pk=pk)
    return get_object_or_404(Block.objects.visible_to(request.user), pk=pk)


def _get_network_for_user(request, pk):
    require_superadmin(request)
    return get_object_or_404(AllowedNetwork.objects.writable_by(request.user), pk=pk)


def safe_next(request, fallback):
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return fallback


class BlockForm(forms.Form):
    kind = forms.ChoiceField(choices=Block.Kind.choices)
    value = forms.CharField(max_length=50, label="IP address or CIDR")
    username = forms.CharField(max_length=320, required=False, help_text="Only for IP + username blocks")
    hours = forms.IntegerField(min_value=1, max_value=MAX_BLOCK_HOURS, initial=24, label="Expires after (hours)")
    reason = forms.CharField(max_length=200, required=False)

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean(self):
        data = super().clean()
        kind, value = data.get("kind"), (data.get("value") or "").strip()
        username = (data.get("username") or "").strip().lower()
        if not kind or not value:
            return data
        try:
            if kind == Block.Kind.PREFIX:
                data["value"] = str(ipaddress.ip_network(value, strict=False))
            else:
                data["value"] = str(ipaddress.ip_address(value))
        except ValueError:
            self.add_error(
                "value", f"“{value}” is not a valid {'network' if kind == Block.Kind.PREFIX else 'IP address'}."
            )
            return data
        if kind == Block.Kind.IP_USER:
            if "@" not in username:
                self.add_error("username", "An IP + username block needs the mailbox address.")
            elif not user_writes_username(self.user, username):
                self.add_error("username", "That mailbox is not in your domains.")
        elif not self.user.is_superadmin:
            # IP and prefix blocks shut out every domain's users: server-wide, superadmins only.
            self.add_error("kind", "Only superadmins block whole addresses or networks; use IP + username.")
        data["username"] = username if kind == Block.Kind.IP_USER else ""
        return data


def create_manual_block(request, *, kind, value, username="", hours=24, reason="", alert=None):
    """A block chosen by an admin (no escalation). Returns (block, error message)."""
    if block_engine._allowlist_covers(value):  # the allowlist always wins (read from the database)
        return None, f"{value} is on the allowlist; remove it from the allowlist first."
    now = timezone.now()
    block = Block.objects.create(
        kind=kind,
        value=value,
        username=username,
        reason=(reason or f"manual block by {request.user.email}")[:255],
        rule="manual",
        alert=alert,
        created=now,
        expires_at=now + dt.timedelta(hours=hours),
    )
    audit.record(request, "create", block, changes=audit.diff(None, audit.snapshot(block)))
    return block, None


def lift(request, block):
    before = audit.snapshot(block)
    block_engine.lift_block(block, by=request.user.email)
    audit.record(
        request, "update", block, changes=audit.diff(before, audit.snapshot(block)), object_repr=f"unblock {block}"
    )


@login_required
def block_list(request):
    status = request.GET.get("status", "active")
    now = timezone.now()
    qs = Block.objects.visible_to(request.user)
    if status == "active":
        qs = qs.active(now)
    elif status == "expired":
        qs = qs.exclude(lifted_at__isnull=True, expires_at__gt=now)
    else:
        status = "all"
    page = Paginator(qs.order_by("-created", "-id"), 50).get_page(request.GET.get("page"))
    form = BlockForm(user=request.user) if request.user.can_write else None
    return render(request, "monitoring/blocks.html", {"page": page, "status": status, "form": form, "now": now})


@login_required
@require_POST
def block_create(request):
    require_write(request)
    form = BlockForm(request.POST, user=request.user)
    if not form.is_valid():
        messages.error(
            request, "The block was not created: " + "; ".join(e for errs in form.errors.values() for e in errs)
        )
        return redirect("monitoring:blocks")
    d = form.cleaned_data
    block, error = create_manual_block(
        request, kind=d["kind"], value=d["value"], username=d["username"], hours=d["hours"], reason=d["reason"]
    )
    if error:
        messages.error(request, error)
    else:
        messages.success(request, f"Blocked: {block}.")
    return redirect(safe_next(request, "monitoring:blocks"))


@login_required
@require_POST
def block_lift(request, pk):
    block = _get_block_for_user(request, pk, write=True)
    if block.kind != Block.Kind.IP_USER and not request.user.is_superadmin:
        raise PermissionDenied("Server-wide blocks are lifted by superadmins")
    if block.is_active():
        lift(request, block)
        messages.success(request, f"Unblocked {block.value} {block.username}".strip() + ".")
    else:
        messages.info(request, "That block was no longer active.")
    return redirect(safe_next(request, "monitoring:blocks"))


# --- allowlist ---------------------------------------------------------------------------


class AllowedNetworkForm(forms.ModelForm):
    class Meta:
        model = AllowedNetwork
        fields = ["cidr", "note"]


@login_required
def allowlist(request):
    if not request.user.sees_all_domains:
        raise PermissionDenied("The allowlist is server-wide")
    networks = AllowedNetwork.objects.visible_to(request.user)
    form = AllowedNetworkForm(initial={"cidr": request.GET.get("cidr", "")}) if request.user.is_superadmin else None
    return render(request, "monitoring/allowlist.html", {"networks": networks, "form": form})


@login_required
@require_POST
def allowlist_create(request):
    require_superadmin(request)
    form = AllowedNetworkForm(request.POST)
    if form.is_valid():
        try:
            network = form.save()
        except IntegrityError:
            messages.error(request, "That network is already on the allowlist.")
        else:
            audit.record(request, "create", network, changes=audit.diff(None, audit.snapshot(network)))
            messages.success(request, f"{network.cidr} is allowlisted.")
    else:
        messages.error(request, "Not added: " + "; ".join(e for errs in form.errors.values() for e in errs))
    return redirect("monitoring:allowlist")


@login_required
@require_POST
def allowlist_edit(request, pk):
    network = _get_network_for_user(request, pk)
    before = audit.snapshot(network)
    form = AllowedNetworkForm(request.POST, instance=network)
    if form.is_valid():
        try:
            form.save()
        except IntegrityError:
            messages.error(request, "That network is already on the allowlist.")
            return redirect("monitoring:allowlist")
        audit.record(request, "update", network, changes=audit.diff(before, audit.snapshot(network)))
        messages.success(request, f"{network.cidr} updated.")
    else:
        messages.error(request, "Not saved: " + "; ".join(e for errs in form.errors.values() for e in errs))
    return redirect("monitoring:allowlist")


@login_required
@require_POST
def allowlist_delete(request, pk):
    network = _get_network_for_user(request, pk)
    snapshot = audit.snapshot(network)
    audit.record(request, "delete", network, changes=audit.diff(snapshot, None))
    network.delete()
    messages.success(request, f"{snapshot['cidr']} removed from the allowlist.")
    return redirect("monitoring:allowlist")
