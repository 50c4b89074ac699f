"""Mailbox pages: list (all domains or one), detail, create, edit, suspend /
reactivate / disable, delete, password reset, aliases.

Who may do what (one place: _get_mailbox_for_user):
  superadmin    everything;
  domain admin  the mailboxes of their own domains;
  auditor       reads, every write is 403.
A mailbox outside the user's scope is a 404, whatever the action.
Passwords (given or generated) are shown once, in the POST response, never stored
in clear, never in the audit log.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from mailadmin.accounts import credentials, mailboxes
from mailadmin.accounts.forms_mailboxes import (
    AliasForm,
    MailboxCreateForm,
    MailboxEditForm,
    PasswordResetForm,
    SuspendForm,
)
from mailadmin.accounts.models import Alias, Domain, Mailbox
from mailadmin.accounts.policy import check_password, strength
from mailadmin.staff import audit

PAGE_SIZE = 50


def _get_mailbox_for_user(request, pk, *, write=False) -> Mailbox:
    try:
        mailbox = Mailbox.objects.visible_to(request.user).select_related("domain").get(pk=pk)
    except Mailbox.DoesNotExist:
        raise Http404("No such mailbox") from None
    if write and not Mailbox.objects.writable_by(request.user).filter(pk=pk).exists():
        raise PermissionDenied("Read-only access")
    return mailbox


def require_writer(request):
    if not request.user.can_write:
        raise PermissionDenied("Read-only access")


def _shown_once(response):
    response["Cache-Control"] = "no-store"
    return response


def filter_mailboxes(request, queryset):
    """Search (address or display name), state and domain filters from the query string."""
    query = request.GET.get("q", "").strip()
    state = request.GET.get("state", "")
    domain_id = request.GET.get("domain", "")
    if query:
        local, _, domain_part = query.partition("@")
        condition = Q(local_part__icontains=query) | Q(display_name__icontains=query)
        if domain_part:
            condition |= Q(local_part__icontains=local, domain__name__icontains=domain_part)
        queryset = queryset.filter(condition)
    if state in Mailbox.State.values:
        queryset = queryset.filter(state=state)
    if domain_id.isdigit():
        queryset = queryset.filter(domain_id=int(domain_id))
    return queryset, {"q": query, "state": state, "domain": domain_id}


@login_required
def mailbox_list(request):
    queryset = Mailbox.objects.visible_to(request.user).select_related("domain")
    queryset, filters = filter_mailboxes(request, queryset)
    domains = Domain.objects.visible_to(request.user)
    current_domain = None
    if filters["domain"].isdigit():
        current_domain = domains.filter(pk=int(filters["domain"])).first()
        if current_domain is None:
            raise Http404("No such domain")
    page = Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "filters": filters,
        "states": Mailbox.State.choices,
        "domains": domains,
        "current_domain": current_domain,
        "can_write": request.user.can_write,
    }
    return render(request, "accounts/mailboxes/list.html", context)


@login_required
def mailbox_detail(request, pk):
    mailbox = _get_mailbox_for_user(request, pk)
    can_write = Mailbox.objects.writable_by(request.user).filter(pk=pk).exists()
    context = {
        "mailbox": mailbox,
        "aliases": mailbox.aliases.select_related("domain"),
        "app_passwords": mailbox.app_passwords.all(),
        "can_write": can_write,
        "alias_form": AliasForm(),
        "suspend_form": SuspendForm(),
    }
    return render(request, "accounts/mailboxes/detail.html", context)


@never_cache
@login_required
def mailbox_create(request):
    require_writer(request)
    initial = {}
    if request.GET.get("domain", "").isdigit():
        initial["domain"] = int(request.GET["domain"])
    form = MailboxCreateForm(request.POST or None, user=request.user, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            mailbox, generated = mailboxes.create_mailbox(
                data["domain"],
                data["local_part"],
                password=data["password"],
                display_name=data["display_name"],
                send_rate_per_hour=data["send_rate_per_hour"],
            )
        except ValidationError as exc:
            for message in exc.messages:
                form.add_error(None, message)
        else:
            audit.record(
                request, "create", mailbox, changes={**audit.diff(None, audit.snapshot(mailbox)), "password": 1}
            )
            return _shown_once(
                render(
                    request,
                    "accounts/mailboxes/password_shown.html",
                    {"mailbox": mailbox, "password": generated, "created": True},
                )
            )
    return render(request, "accounts/mailboxes/form.html", {"form": form, "title": "New mailbox"})


@login_required
def mailbox_edit(request, pk):
    mailbox = _get_mailbox_for_user(request, pk, write=True)
    before = audit.snapshot(mailbox)
    form = MailboxEditForm(request.POST or None, instance=mailbox)
    if request.method == "POST" and form.is_valid():
        form.save()
        audit.record(request, "update", mailbox, changes=audit.diff(before, audit.snapshot(mailbox)))
        messages.success(request, f"Saved {mailbox}.")
        return redirect(mailbox)
    return render(
        request, "accounts/mailboxes/form.html", {"form": form, "title": f"Edit {mailbox}", "mailbox": mailbox}
    )


@require_POST
@login_required
def mailbox_set_state(request, pk, state):
    mailbox = _get_mailbox_for_user(request, pk, write=True)
    before = audit.snapshot(mailbox)
    reason = request.POST.get("reason", "")
    try:
        mailboxes.set_state(mailbox, state, reason)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect(mailbox)
    audit.record(request, "update", mailbox, changes=audit.diff(before, audit.snapshot(mailbox)))
    messages.success(request, f"{mailbox} is now {mailbox.get_state_display().lower()}.")
    return redirect(mailbox)


@login_required
def mailbox_delete(request, pk):
    mailbox = _get_mailbox_for_user(request, pk, write=True)
    if request.method == "POST":
        if request.POST.get("confirm_address", "").strip().lower() != mailbox.address.lower():
            messages.error(request, "Type the mailbox address exactly to confirm.")
        else:
            snapshot = audit.snapshot(mailbox)
            domain, address, object_id = mailbox.domain, mailbox.address, str(mailbox.pk)
            mailbox.delete()
            audit.record(
                request,
                "delete",
                None,
                object_kind="mailbox",
                object_id=object_id,
                object_repr=address,
                domain=domain,
                changes=audit.diff(snapshot, None),
            )
            messages.success(request, f"Deleted {address}.")
            return redirect(f"{reverse('mailboxes:list')}?domain={domain.pk}")
    context = {
        "mailbox": mailbox,
        "alias_count": mailbox.aliases.count(),
        "app_password_count": mailbox.app_passwords.count(),
    }
    return render(request, "accounts/mailboxes/delete.html", context)


@never_cache
@login_required
def mailbox_reset_password(request, pk):
    mailbox = _get_mailbox_for_user(request, pk, write=True)
    form = PasswordResetForm(request.POST or None, mailbox=mailbox)
    if request.method == "POST" and form.is_valid():
        password = form.cleaned_data["password"]
        generated = None
        if password is None:
            generated = password = credentials.generate_password(mailbox)
        try:
            credentials.set_password(mailbox, password, enforce_policy=generated is None)
        except ValidationError as exc:
            for message in exc.messages:
                form.add_error("password", message)
        else:
            audit.record(request, "password_change", mailbox, changes={"password": 1})
            return _shown_once(
                render(request, "accounts/mailboxes/password_shown.html", {"mailbox": mailbox, "password": generated})
            )
    return render(
        request,
        "accounts/mailboxes/form.html",
        {"form": form, "title": f"New password for {mailbox}", "mailbox": mailbox},
    )


@require_POST
@login_required
def alias_add(request, pk):
    mailbox = _get_mailbox_for_user(request, pk, write=True)
    form = AliasForm(request.POST)
    if form.is_valid():
        address = form.cleaned_data["address"]
        if "@" in address:
            try:
                _, domain_name = mailboxes.split_address(address)
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
                return redirect(mailbox)
            # Aliases only in domains this user manages (404-style message: no existence leak).
            if mailboxes.find_domain(domain_name, Domain.objects.writable_by(request.user)) is None:
                messages.error(request, f"{address} is not in a domain you manage.")
                return redirect(mailbox)
        try:
            alias = mailboxes.add_alias(mailbox, address)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            audit.record(
                request, "create", alias, changes={"address": [None, alias.address], "mailbox": [None, str(mailbox)]}
            )
            messages.success(request, f"Added alias {alias}.")
    else:
        for error in form.errors.get("address", []):
            messages.error(request, error)
    return redirect(mailbox)


@require_POST
@login_required
def alias_remove(request, pk, alias_pk):
    mailbox = _get_mailbox_for_user(request, pk, write=True)
    try:
        alias = mailbox.aliases.get(pk=alias_pk)
    except Alias.DoesNotExist:
        raise Http404("No such alias") from None
    address = alias.address
    audit.record(request, "delete", alias, changes={"address": [address, None], "mailbox": [str(mailbox), None]})
    alias.delete()
    messages.success(request, f"Removed alias {address}.")
    return redirect(mailbox)


@require_POST
@login_required
def password_feedback(request):
    """htmx: the policy's verdict and zxcvbn's feedback while a password is typed."""
    require_writer(request)
    password = request.POST.get("password", "")
    mailbox = None
    if request.POST.get("mailbox", "").isdigit():
        mailbox = _get_mailbox_for_user(request, int(request.POST["mailbox"]), write=True)
    domain = None
    if request.POST.get("domain", "").isdigit():
        domain = Domain.objects.writable_by(request.user).filter(pk=int(request.POST["domain"])).first()
    local_part = request.POST.get("local_part", "")
    problems, meter = [], None
    if password:
        # History (Argon2 per entry) is left to the real submit.
        problems = check_password(
            password,
            domain=domain or (mailbox.domain if mailbox else None),
            local_part=local_part or (mailbox.local_part if mailbox else ""),
        )
        meter = strength(password, [local_part] if local_part else None)
    response = render(
        request,
        "accounts/mailboxes/_password_feedback.html",
        {"problems": problems, "meter": meter, "typed": bool(password)},
    )
    return _shown_once(response)
