"""Password policy pages: the global policy (superadmins edit, everyone reads)
and per-domain overrides (superadmins create, edit and remove them; a domain's
admins and auditors read the policy in force for it)."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from mailadmin.accounts.forms_mailboxes import PasswordPolicyForm
from mailadmin.accounts.models import Domain, PasswordPolicy
from mailadmin.staff import audit


def _get_domain_for_user(request, pk) -> Domain:
    try:
        return Domain.objects.visible_to(request.user).get(pk=pk)
    except Domain.DoesNotExist:
        raise Http404("No such domain") from None


def _require_superadmin(request):
    if not request.user.is_superadmin:
        raise PermissionDenied("Only superadmins change the password policy")


def _edit(request, policy, *, domain, title):
    before = audit.snapshot(policy) if policy.pk else None
    form = PasswordPolicyForm(request.POST or None, instance=policy)
    if request.method == "POST":
        _require_superadmin(request)
        if form.is_valid():
            creating = policy.pk is None
            form.instance.domain = domain
            saved = form.save()
            audit.record(
                request,
                "create" if creating else "update",
                saved,
                object_kind="passwordpolicy",
                domain=domain,
                changes=audit.diff(before, audit.snapshot(saved)),
            )
            messages.success(request, "Saved the password policy.")
            return redirect(request.path)
    if not request.user.is_superadmin:
        for field in form.fields.values():
            field.disabled = True
    overrides = (
        PasswordPolicy.objects.filter(domain__in=Domain.objects.visible_to(request.user)).select_related("domain")
        if domain is None
        else None
    )
    context = {
        "form": form,
        "title": title,
        "domain": domain,
        "policy": policy,
        "overrides": overrides,
        "can_edit": request.user.is_superadmin,
        "domains": Domain.objects.visible_to(request.user),
    }
    return render(request, "accounts/mailboxes/policy.html", context)


@login_required
def global_policy(request):
    return _edit(request, PasswordPolicy.global_policy(), domain=None, title="Password policy (all domains)")


@login_required
def domain_policy(request, pk):
    domain = _get_domain_for_user(request, pk)
    policy = PasswordPolicy.objects.filter(domain=domain).first()
    if policy is None:
        # A new override starts as a copy of the global policy.
        policy = PasswordPolicy.global_policy()
        policy.pk = None
        policy.id = None
        policy._state.adding = True
        policy.domain = domain
    return _edit(request, policy, domain=domain, title=f"Password policy for {domain}")


@require_POST
@login_required
def domain_policy_remove(request, pk):
    domain = _get_domain_for_user(request, pk)
    _require_superadmin(request)
    policy = PasswordPolicy.objects.filter(domain=domain).first()
    if policy is not None:
        audit.record(request, "delete", policy, object_kind="passwordpolicy", domain=domain)
        policy.delete()
        messages.success(request, f"{domain} now follows the global password policy.")
    return redirect(reverse("mailboxes:domain_policy", args=[domain.pk]))
