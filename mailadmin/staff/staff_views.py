"""Staff management pages: superadmins only; everyone else gets 403."""

from allauth.mfa.models import Authenticator
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from mailadmin.security import require_reauthentication
from mailadmin.staff import audit
from mailadmin.staff.accounts import create_staff
from mailadmin.staff.forms import StaffForm
from mailadmin.staff.models import Role, User


def _get_staff_for_user(request, pk) -> User:
    _require_superadmin(request)
    try:
        return User.objects.get(pk=pk)
    except User.DoesNotExist:
        raise Http404("No such staff user") from None


def _require_superadmin(request):
    if not request.user.is_superadmin:
        raise PermissionDenied("Only superadmins manage staff")


def _snapshot(user) -> dict:
    state = audit.snapshot(user)
    for noise in ("last_login", "date_joined", "is_superuser"):
        state.pop(noise, None)
    state["domains"] = sorted(d.name for d in user.domains.all())
    return state


def _is_last_superadmin(user) -> bool:
    return (
        user.role == Role.SUPERADMIN
        and user.is_active
        and not User.objects.filter(role=Role.SUPERADMIN, is_active=True).exclude(pk=user.pk).exists()
    )


@login_required
def staff_list(request):
    _require_superadmin(request)
    has_mfa = Authenticator.objects.filter(
        user=OuterRef("pk"), type__in=[Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN]
    )
    staff = User.objects.annotate(has_mfa=Exists(has_mfa)).prefetch_related("domains")
    return render(request, "staff/staff_list.html", {"staff": staff})


@login_required
def staff_create(request):
    _require_superadmin(request)
    form = StaffForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        require_reauthentication(request)  # a new account with a role is a role change
        data = form.cleaned_data
        with transaction.atomic():
            user, password = create_staff(data["email"], role=data["role"], domains=data["domains"])
            user.full_name = data["full_name"]
            user.all_domains = data["all_domains"]
            user.save(update_fields=["full_name", "all_domains"])
            audit.record(request, "create", user, changes=audit.diff(None, _snapshot(user)))
        # Shown once, on this response only; never stored in clear or logged.
        response = render(request, "staff/staff_created.html", {"new_user": user, "password": password})
        response["Cache-Control"] = "no-store"
        return response
    return render(request, "staff/staff_form.html", {"form": form, "creating": True})


@login_required
def staff_edit(request, pk):
    member = _get_staff_for_user(request, pk)
    before = _snapshot(member)
    # Decided before validation: a valid ModelForm has already copied the new role onto member.
    last_superadmin = _is_last_superadmin(member)
    form = StaffForm(request.POST or None, instance=member)
    if request.method == "POST" and form.is_valid():
        if last_superadmin and form.cleaned_data["role"] != Role.SUPERADMIN:
            form.add_error("role", "This is the last active superadmin; promote someone else first.")
        else:
            if {"role", "domains", "all_domains"} & set(form.changed_data):
                require_reauthentication(request)
            with transaction.atomic():
                member = form.save()
                changes = audit.diff(before, _snapshot(member))
                if changes:
                    action = "role_change" if {"role", "domains", "all_domains"} & set(changes) else "update"
                    audit.record(request, action, member, changes=changes)
            messages.success(request, f"{member} saved." if changes else "Nothing changed.")
            return redirect("staff:staff_list")
    return render(request, "staff/staff_form.html", {"form": form, "member": member, "creating": False})


@login_required
@require_POST
def staff_set_active(request, pk, active: bool):
    member = _get_staff_for_user(request, pk)
    require_reauthentication(request)
    if not active and member == request.user:
        messages.error(request, "You cannot deactivate yourself.")
    elif not active and _is_last_superadmin(member):
        messages.error(request, "This is the last active superadmin; it stays active.")
    elif member.is_active != active:
        with transaction.atomic():
            before = _snapshot(member)
            member.is_active = active
            member.save(update_fields=["is_active"])
            audit.record(request, "update", member, changes=audit.diff(before, _snapshot(member)))
        # An inactive user's sessions stop working at once (the auth backend refuses them).
        messages.success(request, f"{member} {'reactivated' if active else 'deactivated'}.")
    return redirect("staff:staff_list")
