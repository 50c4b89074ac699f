"""The XOAUTH2 / OAUTHBEARER parsers and error challenges, without a socket."""

import json

import pytest

from smtpd import mechanisms as m

pytestmark = pytest.mark.embedded


def test_it_parses_oauthbearer_with_and_without_an_authzid():
    # RFC 7628 section 4.1's example.
    creds = m.parse_oauthbearer(
        b"n,a=user@example.com,\x01host=server.example.com\x01port=587\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    assert (creds.username, creds.token) == ("user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==")
    assert m.parse_oauthbearer(b"n,,\x01auth=Bearer tok\x01\x01").username == ""
    assert m.parse_oauthbearer(b"y,a=a=3Db@x,\x01AUTH=bearer tok\x01\x01").username == "a=b@x"


@pytest.mark.parametrize(
    "blob",
    [
        b"n,a=u@x,auth=Bearer t\x01\x01",  # no ^A after the GS2 header
        b"n,a=u@x,\x01auth=Bearer t\x01",  # not terminated
        b"n,a=u@x,\x01host=x\x01\x01",  # no auth item
        b"n,a=u@x,\x01auth=Basic dTpw\x01\x01",  # not a bearer token
        b"n,a=u@x,\x01auth=Bearer \x01\x01",  # empty token
        b"p=tls-unique,a=u@x,\x01auth=Bearer t\x01\x01",  # channel binding
        b"n,u@x,\x01auth=Bearer t\x01\x01",  # authzid without a=
        b"n,a=u@x,\x01auth=Bearer t\x00\x01\x01",  # NUL
        b"n,a=u@x,\x01=novalue\x01auth=Bearer t\x01\x01",
        b"\xff\xfe",
    ],
)
def test_it_refuses_malformed_oauthbearer(blob):
    with pytest.raises(m.Malformed):
        m.parse_oauthbearer(blob)


def test_it_parses_xoauth2():
    creds = m.parse_xoauth2(
        b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg\x01\x01"
    )
    assert (creds.username, creds.token) == ("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg")


@pytest.mark.parametrize(
    "blob",
    [
        b"user=u@x\x01auth=Bearer t\x01",
        b"auth=Bearer t\x01\x01",
        b"user=\x01auth=Bearer t\x01\x01",
        b"user=u@x\x01\x01",
    ],
)
def test_it_refuses_malformed_xoauth2(blob):
    with pytest.raises(m.Malformed):
        m.parse_xoauth2(blob)


def test_the_token_never_shows_in_a_repr():
    creds = m.parse_xoauth2(b"user=u@x\x01auth=Bearer secret-token-value\x01\x01")
    assert "secret-token-value" not in repr(creds)


def test_error_challenges():
    assert json.loads(m.bearer_error("OAUTHBEARER", "https://mail.example/.well-known/oauth-authorization-server")) == {
        "status": "invalid_token",
        "scope": "smtp",
        "openid-configuration": "https://mail.example/.well-known/oauth-authorization-server",
    }
    assert json.loads(m.bearer_error("XOAUTH2", "ignored")) == {"status": "401", "schemes": "bearer", "scope": "smtp"}
