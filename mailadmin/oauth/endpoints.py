"""The token endpoint: DOT's, plus an auth event for every refused request
(a replayed code, a PKCE mismatch, a bad client secret, a dead refresh token),
so the detectors see attacks on the token endpoint like attacks on SMTP AUTH.
The event names the client and, when the code or refresh token is still known,
its mailbox; never a code, verifier, secret or token."""

import base64
import binascii
import json

from oauth2_provider import views as dot_views

from mailadmin.oauth.tokens import token_checksum
from mailadmin.portal.events import record_signin

MECHANISM = "OAUTH-TOKEN"
_MALFORMED = {"invalid_request", "unsupported_grant_type", "invalid_scope"}


def _client_id(request) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header.lower().startswith("basic "):
        try:
            return base64.b64decode(header[6:]).decode("utf-8").partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return request.POST.get("client_id", "")


def _owner_address(request) -> str:
    """The mailbox behind the presented code or refresh token, if it still exists."""
    from mailadmin.oauth.models import Grant, RefreshToken

    grant_type = request.POST.get("grant_type")
    if grant_type == "authorization_code" and request.POST.get("code"):
        grant = Grant.objects.select_related("user__domain").filter(code=request.POST["code"]).first()
        return grant.user.address if grant else ""
    if grant_type == "refresh_token" and request.POST.get("refresh_token"):
        refresh = (
            RefreshToken.objects.select_related("user__domain")
            .filter(token_checksum=token_checksum(request.POST["refresh_token"]))
            .first()
        )
        return refresh.user.address if refresh and refresh.user else ""
    return ""


class TokenView(dot_views.TokenView):
    def post(self, request, *args, **kwargs):
        # Looked up first: a successful exchange deletes the grant.
        owner = _owner_address(request)
        response = super().post(request, *args, **kwargs)
        if response.status_code != 200:
            try:
                error = json.loads(response.content).get("error", "")
            except (ValueError, AttributeError):
                error = ""
            record_signin(
                request,
                username=owner,
                result="malformed" if error in _MALFORMED else "bad_credentials",
                mechanism=MECHANISM,
                credential=f"oauth_client:{_client_id(request)[:48]}",
            )
        return response
