"""Staff pages for the OAuth2 provider: applications (create, rotate secret,
disable) and access tokens per mailbox (last use, revoke), plus RFC 7662
introspection for staff. Scoped by role; every change is audited."""

import calendar

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from oauth2_provider.generators import generate_client_secret
from oauth2_provider.models import revoke_access_token

from mailadmin.oauth.forms import ApplicationForm
from mailadmin.oauth.models import AccessToken, Application
from mailadmin.oauth.tokens import token_checksum
from mailadmin.security import require_reauthentication
from mailadmin.staff import audit


def _get_application_for_user(request, pk, *, write=False):
    visible = Application.objects.visible_to(request.user)
    application = get_object_or_404(visible, pk=pk)
    if write and not Application.objects.writable_by(request.user).filter(pk=pk).exists():
        raise PermissionDenied
    return application


def _get_token_for_user(request, pk, *, write=False):
    token = get_object_or_404(AccessToken.objects.visible_to(request.user).select_related("user__domain"), pk=pk)
    if write and not AccessToken.objects.writable_by(request.user).filter(pk=pk).exists():
        raise PermissionDenied
    return token


@login_required
def application_list(request):
    applications = Application.objects.visible_to(request.user).select_related("domain")
    can_create = request.user.can_write
    return render(request, "oauth/application_list.html", {"applications": applications, "can_create": can_create})


@login_required
def application_create(request):
    if not request.user.can_write:
        raise PermissionDenied
    form = ApplicationForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        application = form.save(commit=False)
        secret = generate_client_secret()
        application.client_secret = secret  # hashed on save (hash_client_secret)
        application.authorization_grant_type = Application.GRANT_AUTHORIZATION_CODE
        application.user = request.user
        with transaction.atomic():
            application.save()
            audit.record(request, "create", application, changes=audit.diff(None, audit.snapshot(application)))
        return _show_secret_once(request, application, secret)
    return render(request, "oauth/application_form.html", {"form": form})


def _show_secret_once(request, application, secret):
    context = {"application": application, "secret": secret if application.client_type == "confidential" else None}
    response = render(request, "oauth/application_secret.html", context)
    response["Cache-Control"] = "no-store"
    return response


@login_required
def application_detail(request, pk):
    application = _get_application_for_user(request, pk)
    tokens = AccessToken.objects.visible_to(request.user).filter(application=application).select_related("user")
    can_write = Application.objects.writable_by(request.user).filter(pk=pk).exists()
    context = {"application": application, "tokens": tokens[:200], "can_write": can_write}
    return render(request, "oauth/application_detail.html", context)


@login_required
@require_POST
def application_rotate_secret(request, pk):
    application = _get_application_for_user(request, pk, write=True)
    if application.client_type != Application.CLIENT_CONFIDENTIAL:
        messages.error(request, "Public clients have no secret.")
        return redirect("oauth:application_detail", pk=pk)
    require_reauthentication(request)  # a new secret is shown once: confirm who is asking
    secret = generate_client_secret()
    with transaction.atomic():
        application.client_secret = secret
        application.save(update_fields=["client_secret", "updated"])
        audit.record(request, "update", application, changes={"client_secret": [None, audit.REDACTED]})
    return _show_secret_once(request, application, secret)


@login_required
@require_POST
def application_toggle(request, pk):
    application = _get_application_for_user(request, pk, write=True)
    before = audit.snapshot(application)
    application.is_enabled = not application.is_enabled
    with transaction.atomic():
        application.save(update_fields=["is_enabled", "updated"])
        audit.record(request, "update", application, changes=audit.diff(before, audit.snapshot(application)))
    messages.success(request, f"{application.name} is now {'enabled' if application.is_enabled else 'disabled'}.")
    return redirect("oauth:application_detail", pk=pk)


@login_required
def token_list(request):
    tokens = AccessToken.objects.visible_to(request.user).select_related("user__domain", "application")
    mailbox = request.GET.get("mailbox", "").strip()
    if mailbox.isdigit():
        tokens = tokens.filter(user_id=int(mailbox))
    return render(request, "oauth/token_list.html", {"tokens": tokens[:500], "mailbox": mailbox})


@login_required
@require_POST
def token_revoke(request, pk):
    token = _get_token_for_user(request, pk, write=True)
    mailbox = token.user
    with transaction.atomic():
        audit.record(
            request,
            "delete",
            token,
            object_kind="oauth_token",
            domain=mailbox.domain if mailbox else None,
            changes={"mailbox": [str(mailbox), None], "application": [str(token.application), None]},
        )
        revoke_access_token(token)  # also revokes the bound refresh token
    messages.success(request, f"Token #{pk} revoked; it stops working at the next AUTH.")
    next_url = request.POST.get("next", "")
    if next_url and url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        return redirect(next_url)
    return redirect("oauth:token_list")


def authorization_server_metadata(request):
    """RFC 8414: where clients find our endpoints (also named in OAUTHBEARER errors)."""
    base = settings.SITE_URL
    return JsonResponse(
        {
            "issuer": base,
            "authorization_endpoint": base + reverse("oauth:authorize"),
            "token_endpoint": base + reverse("oauth:token"),
            "revocation_endpoint": base + reverse("oauth:revoke"),
            "scopes_supported": ["smtp"],
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        }
    )


@login_required
@require_POST
def introspect(request):
    """RFC 7662 for staff: tokens of mailboxes outside the caller's scope are inactive."""
    raw = request.POST.get("token", "")
    if not raw:
        return JsonResponse({"error": "invalid_request", "error_description": "token is missing"}, status=400)
    token = (
        AccessToken.objects.visible_to(request.user)
        .select_related("user__domain", "application")
        .filter(token_checksum=token_checksum(raw))
        .first()
    )
    if token is None or token.is_expired():
        return JsonResponse({"active": False})
    return JsonResponse(
        {
            "active": True,
            "scope": token.scope,
            "client_id": token.application.client_id if token.application else None,
            "username": token.user.address if token.user else None,
            "token_type": "Bearer",
            "exp": calendar.timegm(token.expires.utctimetuple()),
            "iat": calendar.timegm(token.created.utctimetuple()),
            "jti": str(token.pk),
        }
    )
