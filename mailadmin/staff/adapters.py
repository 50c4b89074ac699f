import time

from allauth.account import app_settings as account_settings
from allauth.account.adapter import DefaultAccountAdapter

# Internal allauth API (65.x): the per-session log of authentication steps.
from allauth.account.internal.flows.login import get_authentication_records
from allauth.core import context
from allauth.mfa.adapter import DefaultMFAAdapter
from allauth.mfa.models import Authenticator

from mailadmin import secretbox


class StaffAccountAdapter(DefaultAccountAdapter):
    """Staff accounts are created by superadmins or commands, never by sign-up."""

    def is_open_for_signup(self, request):
        return False

    def is_reauthentication_required(self, *, app: str, **kwargs) -> bool:
        required = super().is_reauthentication_required(app=app, **kwargs)
        if required and app == "allauth.mfa" and _just_signed_in_without_mfa(context.request):
            # MFA is mandatory and set up straight after the first password login;
            # asking for the password a second time a few seconds later adds nothing.
            return False
        return required


def _just_signed_in_without_mfa(request) -> bool:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or Authenticator.objects.filter(user=user).exists():
        return False
    logins = [r for r in get_authentication_records(request, user) if r.get("method") == "password"]
    return bool(logins) and time.time() - logins[-1]["at"] < account_settings.REAUTHENTICATION_TIMEOUT


class StaffMFAAdapter(DefaultMFAAdapter):
    """TOTP and recovery-code seeds are stored sealed (mailadmin/secretbox.py), not in clear:
    allauth routes every stored MFA secret through these two hooks."""

    def encrypt(self, text: str) -> str:
        return secretbox.seal(text)

    def decrypt(self, encrypted_text: str) -> str:
        return secretbox.unseal(encrypted_text)
