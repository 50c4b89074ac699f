"""Domain pages: list, detail, create, edit, disable/enable, delete.

Who may do what (one place, enforced by _get_domain_for_user and _require_superadmin):
  superadmin    everything;
  domain admin  sees and edits the description and app-password rule of their own domains;
  auditor       reads (all domains or the assigned ones), every write is 403.
A domain outside the user's scope is a 404, whatever the action.
"""

import contextlib

import idna
from django.contrib import messages
from django.contrib.admin.utils import NestedObjects
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import IntegrityError, router, transaction
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from mailadmin.accounts.forms import DomainCreateForm, DomainDeleteForm, DomainEditForm
from mailadmin.accounts.models import Domain
from mailadmin.security import require_reauthentication
from mailadmin.staff import audit

PAGE_SIZE = 25


def _get_domain_for_user(request, pk, *, write=False) -> Domain:
    try:
        domain = Domain.objects.visible_to(request.user).get(pk=pk)
    except Domain.DoesNotExist:
        raise Http404("No such domain") from None
    if write and not Domain.objects.writable_by(request.user).filter(pk=pk).exists():
        raise PermissionDenied("Read-only access")
    return domain


def _require_superadmin(request):
    if not request.user.is_superadmin:
        raise PermissionDenied("Only superadmins may do this")


def _reauthenticate_to_enable_cram(request, form):
    # CRAM-MD5 makes the server keep a password-equivalent secret: switching it on
    # needs a credential entered in the last few minutes (mailadmin.security).
    if form.cleaned_data.get("cram_md5_enabled") and "cram_md5_enabled" in form.changed_data:
        require_reauthentication(request)


def _search(queryset, query):
    query = query.strip()
    if not query:
        return queryset
    condition = Q(name__icontains=query) | Q(description__icontains=query)
    if not query.isascii():
        # Someone typing "bücher" should find xn--bcher-kva.example; a fragment
        # that is not a valid name falls back to the plain search.
        with contextlib.suppress(idna.IDNAError):
            condition |= Q(name__icontains=idna.encode(query, uts46=True).decode("ascii"))
    return queryset.filter(condition)


@login_required
def domain_list(request):
    query = request.GET.get("q", "")
    domains = _search(Domain.objects.visible_to(request.user), query)
    page = Paginator(domains, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "accounts/domains/list.html", {"page": page, "query": query})


@login_required
def domain_detail(request, pk):
    domain = _get_domain_for_user(request, pk)
    can_edit = Domain.objects.writable_by(request.user).filter(pk=pk).exists()
    return render(request, "accounts/domains/detail.html", {"domain": domain, "can_edit": can_edit})


@login_required
def domain_create(request):
    _require_superadmin(request)
    form = DomainCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        _reauthenticate_to_enable_cram(request, form)
        try:
            with transaction.atomic():
                domain = form.save()
                audit.record(request, "create", domain, changes=audit.diff(None, audit.snapshot(domain)))
        except IntegrityError:
            # Another request created the same name between validation and save.
            form.add_error("name", "This domain already exists.")
        else:
            messages.success(request, f"Domain {domain} created.")
            return redirect(domain)
    return render(request, "accounts/domains/form.html", {"form": form, "creating": True})


@login_required
def domain_edit(request, pk):
    domain = _get_domain_for_user(request, pk, write=True)
    before = audit.snapshot(domain)
    form = DomainEditForm(request.POST or None, instance=domain, user=request.user)
    if request.method == "POST" and form.is_valid():
        _reauthenticate_to_enable_cram(request, form)
        with transaction.atomic():
            domain = form.save()
            changes = audit.diff(before, audit.snapshot(domain))
            if changes:
                audit.record(request, "update", domain, changes=changes)
        messages.success(request, f"Domain {domain} saved." if changes else "Nothing changed.")
        return redirect(domain)
    return render(request, "accounts/domains/form.html", {"form": form, "domain": domain, "creating": False})


@login_required
@require_POST
def domain_set_active(request, pk, active: bool):
    domain = _get_domain_for_user(request, pk, write=True)
    _require_superadmin(request)
    if domain.is_active != active:
        with transaction.atomic():
            before = audit.snapshot(domain)
            domain.is_active = active
            domain.save(update_fields=["is_active", "updated"])
            audit.record(request, "update", domain, changes=audit.diff(before, audit.snapshot(domain)))
    messages.success(request, f"Domain {domain} {'enabled' if active else 'disabled'}.")
    return redirect(domain)


def _related_counts(domain):
    """What a delete would take with it, e.g. {"mailboxes": 12}, for the confirmation page."""
    collector = NestedObjects(using=router.db_for_write(Domain))
    collector.collect([domain])
    return {
        model._meta.verbose_name_plural: len(objs)
        for model, objs in collector.model_objs.items()
        if model is not Domain and objs
    }


@login_required
def domain_delete(request, pk):
    domain = _get_domain_for_user(request, pk, write=True)
    _require_superadmin(request)
    form = DomainDeleteForm(request.POST or None, domain=domain)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            audit.record(request, "delete", domain, changes=audit.diff(audit.snapshot(domain), None))
            domain.delete()
        messages.success(request, f"Domain {domain} deleted.")
        return redirect("accounts:domain_list")
    context = {"domain": domain, "form": form, "related": _related_counts(domain)}
    return render(request, "accounts/domains/delete.html", context)
