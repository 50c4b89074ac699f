"""XOAUTH2 and OAUTHBEARER end to end: a token from the real authorization-code
+ PKCE flow (live server), used against the real smtpd process with smtplib,
raw SMTP lines and Debian's curl; every refusal and what the events record."""

import base64
import json
import shutil
import smtplib
import subprocess
import time

import pytest
import redis
import requests
from django.conf import settings

from mailadmin.accounts.models import Domain, Mailbox
from mailadmin.oauth.models import AccessToken
from tests.oauth.flow import full_flow
from tests.oauth.helpers import issue_token, make_application, make_mailbox
from tests.smtpd.conftest import RawClient, smtpd_factory  # noqa: F401

pytestmark = pytest.mark.integration

ADDRESS = "carol@oauth.example"
INVALID = "535 5.7.8 Authentication credentials invalid"


@pytest.fixture(scope="module")
def server(smtpd_factory):  # noqa: F811
    return smtpd_factory()


@pytest.fixture
def carol(transactional_db):
    domain = Domain.objects.create(name="oauth.example")
    make_mailbox(domain, "dave")
    return make_mailbox(domain, "carol")


@pytest.fixture
def app(carol):
    return make_application(name="Mail client")


@pytest.fixture
def token(live_server, carol, app):
    """An access token from the full HTTP flow (the raw value the client holds)."""
    return full_flow(live_server.url, app.client_id, ADDRESS)["access_token"]


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def xoauth2(user, token):
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(user, token, port=587):
    authzid = f"a={user}" if user else ""
    return f"n,{authzid},\x01host=127.0.0.1\x01port={port}\x01auth=Bearer {token}\x01\x01"


def smtp(server):
    client = smtplib.SMTP("127.0.0.1", server.starttls, timeout=10)
    client.starttls(context=_insecure())
    client.ehlo("client.test")
    return client


def _insecure():
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def raw(server, listener="starttls"):
    client = RawClient(server, listener)
    client.cmd("EHLO client.test")
    return client


def refused(client, mechanism, blob, *, inline=True):
    """Run a failing exchange; returns (decoded JSON challenge, final reply)."""
    if inline:
        challenge = client.cmd(f"AUTH {mechanism} {b64(blob)}")
    else:
        assert client.cmd(f"AUTH {mechanism}") == "334 "
        challenge = client.cmd(b64(blob))
    assert challenge.startswith("334 "), challenge
    error = json.loads(base64.b64decode(challenge[4:]))
    final = client.cmd("AQ==" if mechanism == "OAUTHBEARER" else "")
    return error, final


# --- success ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_smtplib_sends_mail_with_a_token_from_the_flow(server, token, mechanism):
    blob = xoauth2(ADDRESS, token) if mechanism == "XOAUTH2" else oauthbearer(ADDRESS, token)
    client = smtp(server)
    assert mechanism in client.esmtp_features["auth"].split()
    code, _ = client.auth(mechanism, lambda challenge=None: blob if challenge is None else "")
    assert code == 235
    client.sendmail(ADDRESS, ["friend@elsewhere.example"], b"Subject: hi\r\n\r\nsent with OAuth\r\n")
    client.quit()
    row = AccessToken.objects.get()
    assert row.last_used is not None


def test_continuation_and_implicit_tls(server, token):
    client = raw(server, "tls")
    assert client.cmd("AUTH XOAUTH2") == "334 "
    assert client.cmd(b64(xoauth2(ADDRESS, token))) == "235 2.7.0 Authentication successful"
    client = raw(server, "tls")
    assert client.cmd("AUTH oauthbearer") == "334 "
    assert client.cmd(b64(oauthbearer(ADDRESS, token))) == "235 2.7.0 Authentication successful"


def test_oauthbearer_without_an_authzid_means_the_tokens_mailbox(server, token):
    client = raw(server)
    assert client.cmd(f"AUTH OAUTHBEARER {b64(oauthbearer('', token))}") == "235 2.7.0 Authentication successful"
    assert client.cmd(f"MAIL FROM:<{ADDRESS}>").startswith("250")


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
@pytest.mark.parametrize("initial_response", [False, True])
def test_debian_curl_with_oauth2_bearer(server, token, tmp_path, initial_response):
    message = tmp_path / "mail.txt"
    message.write_text("From: carol@oauth.example\r\nSubject: curl\r\n\r\nsent by curl\r\n")
    args = ["curl", "--silent", "--show-error", "--verbose", "--url", f"smtp://127.0.0.1:{server.starttls}"]
    args += ["--ssl-reqd", "--insecure", "--oauth2-bearer", token, "--user", f"{ADDRESS}:"]
    args += ["--mail-from", ADDRESS, "--mail-rcpt", "friend@elsewhere.example", "-T", str(message)]
    if initial_response:
        args.append("--sasl-ir")  # the token on the AUTH line; by default curl sends it as a continuation
    result = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    # curl prefers OAUTHBEARER when both are offered.
    auth = [line for line in result.stderr.splitlines() if line.startswith("> AUTH")]
    assert auth == (["> AUTH OAUTHBEARER " + auth[0].split(" ", 3)[3]] if initial_response else ["> AUTH OAUTHBEARER"])
    assert "< 235 2.7.0 Authentication successful" in result.stderr
    assert "< 250 2.0.0 Message accepted" in result.stderr


# --- advertising --------------------------------------------------------------------------------


def test_oauth_is_advertised_only_after_tls(server, carol):
    client = RawClient(server, "starttls", tls=False)
    assert "XOAUTH2" not in client.cmd("EHLO client.test")
    assert client.cmd("STARTTLS").startswith("220")
    client.sock = _insecure().wrap_socket(client.sock)
    assert "250-AUTH PLAIN LOGIN SCRAM-SHA-256 XOAUTH2 OAUTHBEARER" in client.cmd("EHLO client.test")


def test_oauth_off_is_neither_advertised_nor_accepted(smtpd_factory, carol, app):  # noqa: F811
    _, raw_token = issue_token(carol, app)
    server = smtpd_factory(OAUTH_ENABLED="0")
    client = RawClient(server, "starttls")
    assert "XOAUTH2" not in client.cmd("EHLO client.test")
    assert (
        client.cmd(f"AUTH XOAUTH2 {b64(xoauth2(ADDRESS, raw_token))}") == "504 5.5.4 Unrecognized authentication type"
    )


# --- every refusal --------------------------------------------------------------------------------


REFUSALS = [
    "expired",
    "revoked",
    "wrong_user",
    "wrong_scope",
    "wrong_audience",
    "unknown",
    "bad_chars",
    "too_long",
    "suspended",
]


def _refused_token(case, live_server, carol, app):
    """(user to name, token value) for one kind of bad token."""
    if case == "expired":
        return ADDRESS, issue_token(carol, app, expires_in=-10)[1]
    if case == "revoked":
        value = full_flow(live_server.url, app.client_id, ADDRESS)["access_token"]
        response = requests.post(
            f"{live_server.url}/oauth/revoke/", data={"token": value, "client_id": app.client_id}, timeout=10
        )
        assert response.status_code == 200
        return ADDRESS, value
    if case == "wrong_user":
        return "dave@oauth.example", issue_token(carol, app)[1]
    if case == "wrong_scope":
        return ADDRESS, issue_token(carol, app, scope="read")[1]
    if case == "wrong_audience":  # RFC 8707: bound to another resource server
        return ADDRESS, issue_token(carol, app, resource=["https://api.elsewhere.example/"])[1]
    if case == "unknown":
        return ADDRESS, "A" * 40
    if case == "bad_chars":
        return ADDRESS, "not$a%token"
    if case == "too_long":  # a token that fits the line is still looked up (and unknown here)
        return ADDRESS, "A" * 9000
    value = issue_token(carol, app)[1]
    Mailbox.objects.filter(pk=carol.pk).update(state=Mailbox.State.SUSPENDED)
    return ADDRESS, value


# One test per mechanism walks every case: a flush of the live-server database per case costs seconds.
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
def test_refusals_send_the_json_challenge_then_535(server, live_server, carol, app, mechanism):
    for number, case in enumerate(REFUSALS):
        user, value = _refused_token(case, live_server, carol, app)
        blob = xoauth2(user, value) if mechanism == "XOAUTH2" else oauthbearer(user, value)
        # Alternate inline and continuation responses.
        error, final = refused(raw(server), mechanism, blob, inline=number % 2 == 0)
        if mechanism == "XOAUTH2":
            assert error == {"status": "401", "schemes": "bearer", "scope": "smtp"}, case
        else:
            assert error["status"] == "invalid_token" and error["scope"] == "smtp", case
            assert error["openid-configuration"].endswith("/.well-known/oauth-authorization-server")
        assert final == INVALID, case


def test_a_revoked_token_fails_on_the_next_auth_of_a_live_client(server, live_server, app):
    value = full_flow(live_server.url, app.client_id, ADDRESS)["access_token"]
    assert raw(server).cmd(f"AUTH XOAUTH2 {b64(xoauth2(ADDRESS, value))}").startswith("235")
    requests.post(f"{live_server.url}/oauth/revoke/", data={"token": value, "client_id": app.client_id}, timeout=10)
    assert refused(raw(server), "XOAUTH2", xoauth2(ADDRESS, value))[1] == INVALID


def test_malformed_exchanges_get_501(server, carol):
    client = raw(server)
    assert client.cmd(f"AUTH XOAUTH2 {b64('user=carol@oauth.example')}") == "501 5.5.2 Malformed authentication data"
    assert client.cmd(f"AUTH OAUTHBEARER {b64('n,a=x,')}") == "501 5.5.2 Malformed authentication data"
    assert client.cmd("AUTH XOAUTH2 !!notbase64") == "501 5.5.2 Invalid base64 data"
    assert client.cmd("AUTH XOAUTH2") == "334 "
    assert client.cmd("*") == "501 5.7.0 Authentication cancelled"


def test_tokens_up_to_the_line_limit_are_read_and_longer_lines_refused(server, carol):
    client = raw(server)
    # A continuation of exactly 12,288 octets is read and checked (an unknown token here).
    head = "user=carol@oauth.example\x01auth=Bearer "
    room = 12288 // 4 * 3 - len(head) - 2
    blob = head + "A" * room + "\x01\x01"
    assert len(b64(blob)) == 12288
    error, final = refused(client, "XOAUTH2", blob, inline=False)
    assert final == INVALID
    # Longer: the line is refused and the session stays in step. (The reader admits
    # 12,289 octets, its limit counting the CR; that off-by-one is smtpd's to settle.)
    client = raw(server)
    assert client.cmd("AUTH XOAUTH2") == "334 "
    assert client.cmd("A" * 12292) == "500 5.5.6 Authentication Exchange line is too long"
    assert client.cmd("NOOP").startswith("250")


@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="reads the Redis broker's queue")
def test_events_name_the_token_by_id_and_never_contain_it(server, live_server, app):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("ingest")
    value = full_flow(live_server.url, app.client_id, ADDRESS)["access_token"]
    token_id = AccessToken.objects.get().pk
    client = raw(server)
    refused(client, "OAUTHBEARER", oauthbearer("dave@oauth.example", value))
    assert client.cmd(f"AUTH XOAUTH2 {b64(xoauth2(ADDRESS, value))}").startswith("235")
    events = []
    deadline = time.monotonic() + 10
    while len(events) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        messages = [json.loads(m) for m in broker.lrange("ingest", 0, -1)]
        dumped = json.dumps(messages)
        events = [e for m in messages for e in json.loads(base64.b64decode(m["body"]))[0][0]]
        events = [e for e in events if e.get("mechanism") in ("XOAUTH2", "OAUTHBEARER")]
    broker.delete("ingest")
    by_mechanism = {e["mechanism"]: e for e in events}
    assert by_mechanism["OAUTHBEARER"]["result"] == "bad_credentials"
    assert by_mechanism["OAUTHBEARER"]["username"] == "dave@oauth.example"
    assert by_mechanism["XOAUTH2"]["result"] == "success"
    assert by_mechanism["XOAUTH2"]["credential"] == f"oauth_token:{token_id}"
    assert by_mechanism["XOAUTH2"]["username"] == ADDRESS
    assert value not in dumped and b64(xoauth2(ADDRESS, value)) not in dumped
    assert value not in server.logs()
