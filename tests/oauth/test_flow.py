"""The authorization-code + PKCE flow over real HTTP against a live server:
real redirects through the portal sign-in, the consent page, the token,
refresh and revocation endpoints."""

import base64
import json

import pytest
import redis
import requests
from django.conf import settings

from mailadmin.oauth.models import AccessToken, Application, RefreshToken
from mailadmin.oauth.tokens import check_bearer
from mailadmin.portal import events as portal_events
from tests.oauth.flow import allow, authorize, exchange, full_flow, redirect_query, sign_in
from tests.oauth.helpers import make_application, make_mailbox, pkce_pair


@pytest.fixture
def alice(transactional_db, domain_a):
    return make_mailbox(domain_a, "alice")


@pytest.fixture
def public_app(transactional_db):
    return make_application(name="Thunderbird")


def _signed_in(live_server, address="alice@a.example"):
    session = requests.Session()
    response = sign_in(session, live_server.url, address)
    assert response.url.endswith("/my/"), response.url
    return session


def test_public_client_gets_a_working_smtp_token(live_server, alice, public_app, settings):
    token = full_flow(live_server.url, public_app.client_id, "alice@a.example")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "smtp"
    assert token["expires_in"] == settings.OAUTH_ACCESS_TOKEN_SECONDS == 3600
    check = check_bearer(token["access_token"], "alice@a.example")
    assert check.ok and check.mailbox_id == alice.pk
    row = AccessToken.objects.get(pk=check.token_id)
    assert row.user_id == alice.pk and row.token == ""  # hashed at rest


def test_confidential_client_authenticates_with_its_secret(live_server, alice):
    app = make_application(name="Web mailer", client_type=Application.CLIENT_CONFIDENTIAL, secret="s3cret-" * 6)
    token = full_flow(live_server.url, app.client_id, "alice@a.example", secret="s3cret-" * 6)
    assert check_bearer(token["access_token"], "alice@a.example").ok


def test_a_replayed_code_is_refused(live_server, alice, public_app):
    session = _signed_in(live_server)
    verifier, challenge = pkce_pair()
    query = allow(session, authorize(session, live_server.url, public_app.client_id, challenge=challenge))
    first = exchange(live_server.url, public_app.client_id, query["code"], verifier)
    assert first.status_code == 200
    replay = exchange(live_server.url, public_app.client_id, query["code"], verifier)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    assert "access_token" not in replay.json()


def test_a_pkce_mismatch_is_refused(live_server, alice, public_app):
    session = _signed_in(live_server)
    _, challenge = pkce_pair()
    other_verifier, _ = pkce_pair()
    query = allow(session, authorize(session, live_server.url, public_app.client_id, challenge=challenge))
    response = exchange(live_server.url, public_app.client_id, query["code"], other_verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert AccessToken.objects.count() == 0


def test_a_public_client_must_use_pkce(live_server, alice, public_app):
    session = _signed_in(live_server)
    response = authorize(session, live_server.url, public_app.client_id, challenge=None)
    assert response.status_code == 302
    query = redirect_query(response)
    assert query["error"] == "invalid_request"
    assert query["state"] == "xyz"


def test_the_plain_pkce_method_is_refused(live_server, alice, public_app):
    session = _signed_in(live_server)
    verifier, _ = pkce_pair()
    consent = authorize(
        session,
        live_server.url,
        public_app.client_id,
        challenge=None,
        extra={"code_challenge": verifier, "code_challenge_method": "plain"},
    )
    assert consent.status_code == 200
    assert allow(session, consent)["error"] == "invalid_request"
    assert AccessToken.objects.count() == 0


def test_an_unknown_scope_is_refused(live_server, alice, public_app):
    session = _signed_in(live_server)
    _, challenge = pkce_pair()
    response = authorize(session, live_server.url, public_app.client_id, challenge=challenge, scope="smtp imap")
    assert redirect_query(response)["error"] == "invalid_scope"


def test_an_unregistered_redirect_uri_is_never_followed(live_server, alice, public_app):
    session = _signed_in(live_server)
    _, challenge = pkce_pair()
    response = authorize(
        session,
        live_server.url,
        public_app.client_id,
        challenge=challenge,
        extra={"redirect_uri": "https://evil.example/cb"},
    )
    assert response.status_code == 400
    assert "evil.example" not in response.headers.get("Location", "")
    assert 'data-testid="oauth-error"' in response.text


def test_denying_consent_redirects_with_access_denied(live_server, alice, public_app):
    session = _signed_in(live_server)
    _, challenge = pkce_pair()
    query = allow(session, authorize(session, live_server.url, public_app.client_id, challenge=challenge), "deny")
    assert query["error"] == "access_denied"
    assert "code" not in query


def test_refresh_rotates_and_the_old_refresh_token_is_dead(live_server, alice, public_app):
    token = full_flow(live_server.url, public_app.client_id, "alice@a.example")
    data = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": public_app.client_id}
    refreshed = requests.post(f"{live_server.url}/oauth/token/", data=data, timeout=10)
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["access_token"] != token["access_token"]
    assert check_bearer(new["access_token"], "alice@a.example").ok
    assert not check_bearer(token["access_token"], "alice@a.example").ok
    replay = requests.post(f"{live_server.url}/oauth/token/", data=data, timeout=10)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_rfc7009_revocation_ends_smtp_use(live_server, alice, public_app):
    token = full_flow(live_server.url, public_app.client_id, "alice@a.example")
    response = requests.post(
        f"{live_server.url}/oauth/revoke/",
        data={"token": token["access_token"], "token_type_hint": "access_token", "client_id": public_app.client_id},
        timeout=10,
    )
    assert response.status_code == 200
    assert check_bearer(token["access_token"], "alice@a.example").detail == "unknown"
    # The bound refresh token went with it.
    assert not RefreshToken.objects.filter(user=alice, revoked__isnull=True).exists()


def test_a_disabled_application_cannot_start_a_flow(live_server, alice, public_app):
    public_app.is_enabled = False
    public_app.save()
    session = _signed_in(live_server)
    _, challenge = pkce_pair()
    response = authorize(session, live_server.url, public_app.client_id, challenge=challenge)
    assert response.status_code in (400, 401)
    assert 'data-testid="oauth-error"' in response.text


def test_a_suspended_mailbox_cannot_redeem_its_code(live_server, alice, public_app):
    from mailadmin.accounts.models import Mailbox

    session = _signed_in(live_server)
    verifier, challenge = pkce_pair()
    query = allow(session, authorize(session, live_server.url, public_app.client_id, challenge=challenge))
    Mailbox.objects.filter(pk=alice.pk).update(state=Mailbox.State.SUSPENDED)
    response = exchange(live_server.url, public_app.client_id, query["code"], verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="reads the Redis broker's queue")
def test_token_endpoint_refusals_are_auth_events(live_server, alice, public_app):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("ingest")
    session = _signed_in(live_server)
    verifier, challenge = pkce_pair()
    query = allow(session, authorize(session, live_server.url, public_app.client_id, challenge=challenge))
    wrong_verifier, _ = pkce_pair()
    assert exchange(live_server.url, public_app.client_id, query["code"], wrong_verifier).status_code == 400
    assert exchange(live_server.url, public_app.client_id, query["code"], verifier).status_code == 200
    assert exchange(live_server.url, public_app.client_id, query["code"], verifier).status_code == 400  # replay
    assert portal_events.flush()
    messages = broker.lrange("ingest", 0, -1)
    broker.delete("ingest")
    events = [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0][0] for m in messages]
    refusals = sorted((e for e in events if e["mechanism"] == "OAUTH-TOKEN"), key=lambda e: e["ts"])
    assert [e["result"] for e in refusals] == ["bad_credentials", "bad_credentials"]
    # The PKCE mismatch still knew the code's mailbox; the replayed code is gone.
    assert [e["username"] for e in refusals] == ["alice@a.example", ""]
    assert {e["credential"] for e in refusals} == {f"oauth_client:{public_app.client_id}"}
    dumped = b"".join(messages).decode()
    assert query["code"] not in dumped and verifier not in dumped and wrong_verifier not in dumped
