"""Every staff user must have a second factor before reaching any other page."""

from allauth.mfa.models import Authenticator
from django.shortcuts import redirect
from django.urls import reverse

# Pages a signed-in user without MFA may still reach: MFA set-up itself,
# logout, and the allauth flow pages those need.
_ALLOWED_PREFIXES = ("/accounts/2fa/", "/accounts/logout/", "/accounts/reauthenticate/", "/static/")


class RequireMFAMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            user is not None
            and user.is_authenticated
            and not request.path.startswith(_ALLOWED_PREFIXES)
            and not self._has_mfa(request, user)
        ):
            return redirect(f"{reverse('mfa_activate_totp')}?next={request.path}")
        return self.get_response(request)

    @staticmethod
    def _has_mfa(request, user):
        cached = getattr(request, "_staff_has_mfa", None)
        if cached is None:
            cached = Authenticator.objects.filter(
                user=user, type__in=[Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN]
            ).exists()
            request._staff_has_mfa = cached
        return cached
