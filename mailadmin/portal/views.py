"""The mailbox-owner portal (/my/): sign-in, own history, password, app
passwords, OAuth grants, notices, TOTP, and the OAuth consent page.

Authorization is one rule: every query is filtered by ``request.mailbox``, set
by @owner_required from the portal session; object helpers return 404 for
anything else, so URL tampering finds nothing.
"""

import time

from allauth.mfa.adapter import get_adapter as get_mfa_adapter
from allauth.mfa.totp.internal.auth import generate_totp_secret, validate_totp_code
from django.contrib import messages
from django.core.cache import cache
from django.db import transaction
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST
from oauth2_provider.exceptions import FatalClientError, OAuthToolkitError
from oauth2_provider.http import OAuth2ResponseRedirect
from oauth2_provider.models import revoke_access_token
from oauth2_provider.oauth2_backends import get_oauthlib_core
from oauth2_provider.scopes import get_scopes_backend

from mailadmin import secretbox
from mailadmin.accounts import credentials
from mailadmin.accounts.fingerprint import pw_fp
from mailadmin.accounts.models import AppPassword, Mailbox
from mailadmin.accounts.verify import normalise_username, verify_password
from mailadmin.oauth.models import AccessToken, Application, RefreshToken
from mailadmin.portal import ratelimit
from mailadmin.portal.events import client_ip, record_signin
from mailadmin.portal.forms import AppPasswordForm, NoticeForm, PasswordChangeForm, SignInForm, TOTPForm
from mailadmin.portal.history import login_history
from mailadmin.portal.models import OwnerSettings
from mailadmin.portal.session import (
    begin_totp,
    current_mailbox,
    owner_required,
    pending_mailbox,
    refresh,
    sign_in,
    sign_out,
)
from mailadmin.staff import audit

GENERIC_FAILURE = "The address or password is wrong, or this mailbox may not sign in."
TEMP_FAILURE = "Sign-in is unavailable for a moment. Please try again shortly."
# verify_password outcomes that still prove the owner knows the mailbox password:
# the portal is where they create app passwords or replace an expired password.
_PORTAL_OK = {"success", "app_password_required", "expired"}
# verify_password reasons -> the auth-event contract's results.
_EVENT_RESULTS = {
    "success": "success",
    "unknown_user": "unknown_user",
    "disabled": "disabled",
    "suspended": "disabled",
    "temp_failure": "temp_failure",
}
TOTP_SETUP_KEY = "portal_totp_setup_secret"


def _next_url(request):
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse("portal:home")


def _password_accepted(result) -> bool:
    """The mailbox password itself (never an app password: those are for mail clients)."""
    return result.credential == "password" and str(result.reason) in _PORTAL_OK


def _event_result(result) -> str:
    return _EVENT_RESULTS.get(str(result.reason), "bad_credentials")


def _owner_audit(request, action, obj, **kwargs):
    """Owner changes go into the staff audit log too, so admins see them."""
    audit.record(None, action, obj, actor_email=f"owner {request.mailbox.address}", **kwargs)


# --- sign-in --------------------------------------------------------------------------


@never_cache
def login(request):
    if current_mailbox(request) is not None:
        return redirect(_next_url(request))
    form = SignInForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        ip = client_ip(request)
        raw_address = form.cleaned_data["address"].strip()
        password = form.cleaned_data["password"]
        try:
            username = normalise_username(raw_address)
        except (ValueError, UnicodeError):
            username = raw_address.casefold()
        if ratelimit.is_limited(ip, username):
            record_signin(request, username=username, result="blocked", mechanism="WEB")
            form.add_error(None, "Too many failed sign-ins. Wait a few minutes, then try again.")
            status = 429
        else:
            started = time.monotonic()
            result = verify_password(username, password, client_ip=ip, mechanism="WEB")
            latency_ms = int((time.monotonic() - started) * 1000)
            if not _password_accepted(result):
                ratelimit.record_failure(ip, username)
                # A correct app password is still a failed portal sign-in.
                outcome = "bad_credentials" if result.ok else _event_result(result)
                record_signin(
                    request,
                    username=result.username or username,
                    result=outcome,
                    mechanism="WEB",
                    credential=result.credential or "none",
                    pw_fp=pw_fp(result.username or username, password),
                    latency_ms=latency_ms,
                )
                form.add_error(None, GENERIC_FAILURE if outcome != "temp_failure" else TEMP_FAILURE)
                status = 503 if outcome == "temp_failure" else 401
            else:
                ratelimit.record_success(username)
                mailbox = Mailbox.objects.select_related("domain").get(pk=result.mailbox_id)
                next_url = _next_url(request)
                if result.reason == "expired":
                    messages.warning(request, "Your password has expired: choose a new one.")
                    next_url = reverse("portal:password")
                if OwnerSettings.for_mailbox(mailbox.pk).has_totp:
                    begin_totp(request, mailbox)
                    return redirect(f"{reverse('portal:login_totp')}?{urlencode({'next': next_url})}")
                sign_in(request, mailbox)
                record_signin(
                    request,
                    username=mailbox.address,
                    result="success",
                    mechanism="WEB",
                    credential="password",
                    latency_ms=latency_ms,
                )
                return redirect(next_url)
    return render(request, "portal/login.html", {"form": form, "next": _next_url(request)}, status=status)


def _totp_code_unused(mailbox_id, code) -> bool:
    # A code is good for one sign-in only: remember it for longer than its validity window.
    return cache.add(f"portal:totp-used:{mailbox_id}:{code}", 1, timeout=180)


@never_cache
def login_totp(request):
    mailbox = pending_mailbox(request)
    if mailbox is None:
        return redirect("portal:login")
    form = TOTPForm(request.POST or None)
    status = 200
    if request.method == "POST" and form.is_valid():
        ip = client_ip(request)
        code = form.cleaned_data["code"]
        secret = OwnerSettings.for_mailbox(mailbox.pk).totp_key
        if ratelimit.is_limited(ip, mailbox.address):
            form.add_error(None, "Too many failed sign-ins. Wait a few minutes, then try again.")
            record_signin(request, username=mailbox.address, result="blocked", mechanism="WEB-TOTP")
            status = 429
        elif secret and validate_totp_code(secret, code) and _totp_code_unused(mailbox.pk, code):
            ratelimit.record_success(mailbox.address)
            sign_in(request, mailbox)
            record_signin(
                request, username=mailbox.address, result="success", mechanism="WEB-TOTP", credential="password"
            )
            return redirect(_next_url(request))
        else:
            ratelimit.record_failure(ip, mailbox.address)
            record_signin(
                request,
                username=mailbox.address,
                result="bad_credentials",
                mechanism="WEB-TOTP",
                credential="password",
            )
            form.add_error("code", "That code is wrong or was already used.")
            status = 401
    return render(request, "portal/login_totp.html", {"form": form, "next": _next_url(request)}, status=status)


@require_POST
def logout(request):
    sign_out(request)
    return redirect("portal:login")


# --- the owner's pages ---------------------------------------------------------------


@owner_required
def home(request):
    context = {"mailbox": request.mailbox, "events": login_history(request.mailbox)}
    return render(request, "portal/home.html", context)


@owner_required
@never_cache
def password(request):
    mailbox = request.mailbox
    form = PasswordChangeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        ip = client_ip(request)
        if ratelimit.is_limited(ip, mailbox.address):
            form.add_error(None, "Too many wrong passwords. Wait a few minutes, then try again.")
            return render(request, "portal/password.html", {"form": form, "mailbox": mailbox}, status=429)
        current = verify_password(mailbox.address, form.cleaned_data["current"], client_ip=ip, mechanism="WEB")
        if not (_password_accepted(current) and current.mailbox_id == mailbox.pk):
            ratelimit.record_failure(ip, mailbox.address)
            form.add_error("current", "The current password is wrong.")
        else:
            try:
                credentials.set_password(mailbox, form.cleaned_data["new"])
            except credentials.PasswordRejected as exc:
                for message in exc.messages:
                    form.add_error("new", message)
            else:
                mailbox.refresh_from_db()
                refresh(request, mailbox)
                _owner_audit(request, "password_change", mailbox, changes={"password": [None, audit.REDACTED]})
                messages.success(request, "Your password was changed. Update it in your mail clients.")
                return redirect("portal:home")
    return render(request, "portal/password.html", {"form": form, "mailbox": mailbox})


def _get_app_password_for_owner(request, pk):
    return get_object_or_404(AppPassword.objects.filter(mailbox_id=request.mailbox.pk), pk=pk)


@owner_required
@never_cache
def app_passwords(request):
    mailbox = request.mailbox
    form = AppPasswordForm(request.POST or None)
    new_secret = None
    if request.method == "POST" and form.is_valid():
        app, new_secret = credentials.create_app_password(mailbox, form.cleaned_data["name"])
        _owner_audit(request, "create", app, changes={"name": [None, app.name]})
        form = AppPasswordForm()
    context = {
        "mailbox": mailbox,
        "form": form,
        "new_secret": new_secret,
        "app_passwords": AppPassword.objects.filter(mailbox_id=mailbox.pk),
    }
    return render(request, "portal/app_passwords.html", context)  # never_cache: no-store


@owner_required
@require_POST
def app_password_revoke(request, pk):
    app = _get_app_password_for_owner(request, pk)
    if credentials.revoke_app_password(app):
        _owner_audit(request, "delete", app, changes={"name": [app.name, None]})
        messages.success(request, f'App password "{app.name}" revoked.')
    return redirect("portal:app_passwords")


@owner_required
def grants(request):
    tokens = AccessToken.objects.of_mailbox(request.mailbox.pk).select_related("application")
    by_app = {}
    for token in tokens:
        entry = by_app.setdefault(token.application_id, {"application": token.application, "tokens": []})
        entry["tokens"].append(token)
    return render(request, "portal/grants.html", {"mailbox": request.mailbox, "grants": list(by_app.values())})


@owner_required
@require_POST
def grant_revoke(request, application_pk):
    """Remove an application's access: every access and refresh token it holds for this mailbox."""
    mailbox_id = request.mailbox.pk
    tokens = list(AccessToken.objects.of_mailbox(mailbox_id).filter(application_id=application_pk))
    refresh_tokens = list(
        RefreshToken.objects.filter(user_id=mailbox_id, application_id=application_pk, revoked__isnull=True)
    )
    if not tokens and not refresh_tokens:
        raise Http404
    application = Application.objects.get(pk=application_pk)
    with transaction.atomic():
        for token in tokens:
            revoke_access_token(token)
        for refresh_token in refresh_tokens:
            refresh_token.revoke()
        _owner_audit(
            request,
            "delete",
            None,
            object_kind="oauth_grant",
            object_id=str(application_pk),
            object_repr=f"{application.name} for {request.mailbox.address}",
            domain=request.mailbox.domain,
        )
    messages.success(request, f"{application.name} can no longer send mail as {request.mailbox.address}.")
    return redirect("portal:grants")


@owner_required
def preferences(request):
    owner = OwnerSettings.for_mailbox(request.mailbox.pk)
    # An unticked checkbox posts nothing: bind on the method, not on the data.
    data = request.POST if request.method == "POST" else None
    form = NoticeForm(data, initial={"notify_new_signin": owner.notify_new_signin})
    if request.method == "POST" and form.is_valid():
        owner.notify_new_signin = form.cleaned_data["notify_new_signin"]
        owner.save(update_fields=["notify_new_signin", "updated"])
        messages.success(request, "Saved.")
        return redirect("portal:preferences")
    return render(request, "portal/preferences.html", {"mailbox": request.mailbox, "form": form, "owner": owner})


@owner_required
@never_cache
def totp_setup(request):
    owner = OwnerSettings.for_mailbox(request.mailbox.pk)
    if owner.has_totp:
        return redirect("portal:preferences")
    # The secret waiting for its first code is kept sealed in the session, too.
    secret = secretbox.unseal(request.session.get(TOTP_SETUP_KEY, "")) or generate_totp_secret()
    request.session[TOTP_SETUP_KEY] = secretbox.seal(secret)
    form = TOTPForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        if validate_totp_code(secret, form.cleaned_data["code"]):
            owner.totp_key = secret
            owner.totp_enabled_at = timezone.now()
            owner.save(update_fields=["totp_secret", "totp_enabled_at", "updated"])
            request.session.pop(TOTP_SETUP_KEY, None)
            _owner_audit(request, "mfa_change", request.mailbox, changes={"totp": [False, True]})
            messages.success(request, "Two-step sign-in is on.")
            return redirect("portal:preferences")
        form.add_error("code", "That code is wrong. Check the clock of your device.")
    issuer = "Mailadmin"
    url = f"otpauth://totp/{issuer}:{request.mailbox.address}?{urlencode({'secret': secret, 'issuer': issuer})}"
    context = {"mailbox": request.mailbox, "form": form, "secret": secret, "svg": get_mfa_adapter().build_totp_svg(url)}
    return render(request, "portal/totp_setup.html", context)


@owner_required
@require_POST
def totp_disable(request):
    owner = OwnerSettings.for_mailbox(request.mailbox.pk)
    form = TOTPForm(request.POST)
    if owner.has_totp and form.is_valid() and validate_totp_code(owner.totp_key, form.cleaned_data["code"]):
        owner.totp_secret = ""
        owner.totp_enabled_at = None
        owner.save(update_fields=["totp_secret", "totp_enabled_at", "updated"])
        _owner_audit(request, "mfa_change", request.mailbox, changes={"totp": [True, False]})
        messages.success(request, "Two-step sign-in is off.")
    else:
        messages.error(request, "That code is wrong; two-step sign-in stays on.")
    return redirect("portal:preferences")


# --- OAuth consent -------------------------------------------------------------------


class _AsOwner:
    """The Django request as DOT's OAuthLibCore sees it, with the signed-in
    mailbox as ``user``: DOT stores ``request.user`` on the grant (models.py)."""

    def __init__(self, request, mailbox):
        self._request = request
        self.user = mailbox

    def __getattr__(self, name):
        return getattr(self._request, name)


def _oauth_error(request, error, application):
    oauthlib_error = error.oauthlib_error
    if isinstance(error, FatalClientError) or not oauthlib_error.redirect_uri:
        # A bad client_id or redirect_uri: never redirect anywhere, tell the owner.
        context = {"error": oauthlib_error.error, "description": oauthlib_error.description}
        return render(request, "portal/authorize_error.html", context, status=oauthlib_error.status_code)
    separator = "&" if "?" in oauthlib_error.redirect_uri else "?"
    url = oauthlib_error.redirect_uri + separator + oauthlib_error.urlencoded
    schemes = application.get_allowed_schemes() if application else ["https", "http"]
    return OAuth2ResponseRedirect(url, schemes)


@owner_required
@never_cache
def authorize(request):
    core = get_oauthlib_core()
    application = None
    try:
        scopes, oauth_credentials = core.validate_authorization_request(request)
        application = Application.objects.get(client_id=oauth_credentials["client_id"])
    except OAuthToolkitError as error:
        return _oauth_error(request, error, application)
    if not application.allows_mailbox(request.mailbox):
        context = {"error": "access_denied", "description": "This application is not available for your mailbox."}
        return render(request, "portal/authorize_error.html", context, status=403)
    if request.method == "POST":
        allow = request.POST.get("decision") == "allow"
        try:
            uri, _headers, _body, _status = core.create_authorization_response(
                _AsOwner(request, request.mailbox), scopes, oauth_credentials, allow
            )
        except OAuthToolkitError as error:
            return _oauth_error(request, error, application)
        return OAuth2ResponseRedirect(uri, application.get_allowed_schemes())
    all_scopes = get_scopes_backend().get_all_scopes()
    context = {
        "mailbox": request.mailbox,
        "application": application,
        "scopes": [(s, all_scopes.get(s, s)) for s in scopes],
    }
    return render(request, "portal/authorize.html", context)
