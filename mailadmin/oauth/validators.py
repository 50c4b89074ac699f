"""Our oauthlib request validator: DOT's, with the mailbox as the resource owner.

DOT's validator stores ``request.user`` on grants and tokens; in this project the
swapped models' ``user`` is a Mailbox (see models.py), so the DOT code is reused
as is. What we add: PKCE is required for public clients, the password grant is
refused outright, and a code or refresh token of a mailbox that is no longer
active (or no longer allowed to use the application) mints nothing.
"""

from oauth2_provider.oauth2_validators import OAuth2Validator

from mailadmin.oauth.models import Application


def _owner_may_use(request) -> bool:
    mailbox = getattr(request, "user", None)
    client = getattr(request, "client", None)
    if mailbox is None or client is None:
        return False
    return mailbox.is_active and mailbox.domain.is_active and client.allows_mailbox(mailbox)


class MailboxOAuth2Validator(OAuth2Validator):
    def is_pkce_required(self, client_id, request):
        # Required for public clients (they cannot keep a secret); a confidential
        # client that sends a code_challenge is held to it by oauthlib all the same.
        client = getattr(request, "client", None)
        if client is None or client.client_id != client_id:
            client = Application.objects.filter(client_id=client_id).only("client_type").first()
        return client is None or client.client_type == Application.CLIENT_PUBLIC

    def validate_user(self, username, password, client, request, *args, **kwargs):
        # The resource-owner password grant would hand a third party the mailbox
        # password, which is exactly what OAuth here exists to avoid.
        return False

    def validate_code(self, client_id, code, client, request, *args, **kwargs):
        return super().validate_code(client_id, code, client, request, *args, **kwargs) and _owner_may_use(request)

    def validate_refresh_token(self, refresh_token, client, request, *args, **kwargs):
        ok = super().validate_refresh_token(refresh_token, client, request, *args, **kwargs)
        return ok and _owner_may_use(request)
