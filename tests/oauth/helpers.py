"""Helpers for OAuth and portal tests: mailboxes with passwords, applications,
tokens issued straight into the database (hashed, as the provider stores them)."""

import base64
import hashlib
import secrets
from datetime import timedelta

from django.utils import timezone
from oauth2_provider.models import set_token_value

from mailadmin.accounts.credentials import set_password
from mailadmin.accounts.models import Mailbox
from mailadmin.oauth.models import AccessToken, Application

PASSWORD = "correct horse battery staple 42"
REDIRECT_URI = "http://127.0.0.1:8765/callback"


def make_mailbox(domain, local_part="alice", password=PASSWORD):
    mailbox = Mailbox.objects.create(domain=domain, local_part=local_part)
    set_password(mailbox, password, enforce_policy=False)
    mailbox.refresh_from_db()
    return mailbox


def make_application(*, name="Mail app", client_type=Application.CLIENT_PUBLIC, secret=None, domain=None):
    app = Application(
        name=name,
        client_type=client_type,
        authorization_grant_type=Application.GRANT_AUTHORIZATION_CODE,
        redirect_uris=REDIRECT_URI,
        domain=domain,
    )
    if secret is not None:
        app.client_secret = secret
    app.save()
    return app


def issue_token(mailbox, application, *, scope="smtp", expires_in=3600, resource=None):
    """An access token as the token endpoint would store it; returns (row, raw token)."""
    raw = secrets.token_urlsafe(30)
    token = AccessToken(
        user=mailbox,
        application=application,
        scope=scope,
        expires=timezone.now() + timedelta(seconds=expires_in),
        resource=resource or [],
    )
    set_token_value(token, raw)
    token.save()
    return token, raw


def pkce_pair():
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge
