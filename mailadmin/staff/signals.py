"""Audit rows for sign-ins and security changes, from Django's and allauth's signals."""

from allauth.account import signals as account_signals
from allauth.mfa import signals as mfa_signals
from django.contrib.auth import signals as auth_signals
from django.dispatch import receiver

from mailadmin.staff import audit
from mailadmin.staff.models import User


def _record_for(request, user, action, **kwargs):
    """Audit row about `user` by `user` (signals fire before/after request.user is set)."""
    entry = audit.record(request, action, user, actor_email=user.email, **kwargs)
    if entry.actor_id != user.pk:
        entry.actor = user
        entry.save(update_fields=["actor"])
    return entry


@receiver(account_signals.user_logged_in)
def on_login(sender, request, user, **kwargs):
    _record_for(request, user, "login")


@receiver(auth_signals.user_logged_out)
def on_logout(sender, request, user, **kwargs):
    if user is not None:
        _record_for(request, user, "logout")


@receiver(auth_signals.user_login_failed)
def on_login_failed(sender, credentials, request=None, **kwargs):
    # Django has already masked the password in `credentials`; only the login name is kept.
    attempted = str(credentials.get("email") or credentials.get("username") or "")[:254]
    user = User.objects.filter(email__iexact=attempted).first() if attempted else None
    if user is not None:
        _record_for(request, user, "login_failed", changes={"stage": [None, "password"]})
    else:
        audit.record(
            request, "login_failed", object_kind="user", object_repr=attempted, actor_email=attempted or "unknown"
        )


@receiver(mfa_signals.authentication_failed)
def on_mfa_failed(sender, request, user, **kwargs):
    _record_for(request, user, "login_failed", changes={"stage": [None, "mfa"]})


@receiver(account_signals.password_changed)
def on_password_changed(sender, request, user, **kwargs):
    _record_for(request, user, "password_change", changes={"password": [None, audit.REDACTED]})


@receiver(account_signals.password_reset)
def on_password_reset(sender, request, user, **kwargs):
    _record_for(request, user, "password_change", changes={"password": [None, audit.REDACTED], "via": [None, "reset"]})


def _authenticator_change(request, user, authenticator, before, after):
    _record_for(
        request,
        user,
        "mfa_change",
        changes={"authenticator": [before, after]},
        object_kind="authenticator",
        object_id=str(authenticator.pk or ""),
        object_repr=f"{user.email} {authenticator.type}",
    )


@receiver(mfa_signals.authenticator_added)
def on_authenticator_added(sender, request, user, authenticator, **kwargs):
    _authenticator_change(request, user, authenticator, None, authenticator.type)


@receiver(mfa_signals.authenticator_removed)
def on_authenticator_removed(sender, request, user, authenticator, **kwargs):
    _authenticator_change(request, user, authenticator, authenticator.type, None)


@receiver(mfa_signals.authenticator_reset)
def on_authenticator_reset(sender, request, user, authenticator, **kwargs):
    _authenticator_change(request, user, authenticator, authenticator.type, f"{authenticator.type} (regenerated)")
