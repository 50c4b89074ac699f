"""Property tests of the SASL parsers in smtpd/mechanisms.py: whatever bytes a
client sends, a parser returns a value or raises Malformed (which the session turns
into a 501) - never another exception - and what a real client encodes comes back."""

import base64
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpd import mechanisms as m

pytestmark = pytest.mark.embedded

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Printable text without NUL: what a user name or password can be.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40)
# Bytes that look like the real thing more often than uniform noise would.
SASLISH = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(
            [
                b"n",
                b"y",
                b"p=x",
                b",",
                b"a=",
                b"n=",
                b"r=",
                b"c=",
                b"p=",
                b"=2C",
                b"=3D",
                b"=",
                b"\x00",
                b"\x01",
                b"auth=Bearer ",
                b"user=",
                b"biws",
                b"\xff",
                b"m=",
                b" ",
            ]
        ),
        max_size=20,
    ).map(b"".join),
)


def only_malformed(parse, *args):
    with contextlib.suppress(m.Malformed):
        parse(*args)


@FAST
@given(st.binary(max_size=500))
def test_base64_round_trips(raw):
    assert m.b64decode_strict(m.b64encode(raw)) == raw
    assert m.b64decode_strict(m.b64encode(raw).encode()) == raw


@FAST
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_base64_decoding_any_input_is_bytes_or_malformed(data):
    with contextlib.suppress(m.Malformed):
        assert isinstance(m.b64decode_strict(data), bytes)


@FAST
@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=64))
def test_base64_decoding_agrees_with_the_standard_library(data):
    try:
        expected = base64.b64decode(data, validate=True)
    except ValueError:
        expected = None
    if data.strip() == "=":
        expected = b""
    try:
        assert m.b64decode_strict(data) == expected
    except m.Malformed:
        assert expected is None


@FAST
@given(SASLISH)
def test_every_parser_returns_or_raises_malformed(blob):
    only_malformed(m.parse_plain, blob)
    only_malformed(m.parse_login_field, blob, "username")
    only_malformed(m.parse_cram_response, blob)
    only_malformed(m.parse_oauthbearer, blob)
    only_malformed(m.parse_xoauth2, blob)
    only_malformed(m.ScramServer().client_first, blob)


@FAST
@given(SASLISH, SASLISH)
def test_scram_final_message_of_any_shape_is_refused_cleanly(first, final):
    server = m.ScramServer()
    try:
        server.client_first(b"n,,n=user,r=abcdefgh")
        server.server_first(b"salt" * 4, 4096)
        server.client_final(final, b"\x00" * 32, b"\x01" * 32)
    except (m.Malformed, m.ScramProofMismatch):
        pass


@FAST
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20), TEXT, TEXT)
def test_plain_round_trips(authzid, username, password):
    blob = f"{authzid}\x00{username}\x00{password}".encode()
    assert m.parse_plain(m.b64decode_strict(m.b64encode(blob))) == m.PlainCredentials(authzid, username, password)


@settings(max_examples=25, deadline=None)
@given(TEXT, TEXT)
def test_scram_client_and_server_agree_on_any_name_and_password(username, password):
    salt = b"0123456789abcdef"
    stored_key, server_key = m.scram_keys(password, salt, 4096)
    client, server = m.ScramClient(username, password), m.ScramServer()
    assert server.client_first(client.first()) == username
    final = server.client_final(client.final(server.server_first(salt, 4096)), stored_key, server_key)
    assert client.verify_server(final)


@settings(max_examples=25, deadline=None)
@given(TEXT, TEXT, TEXT)
def test_scram_with_the_wrong_password_is_a_mismatch_not_a_crash(username, password, wrong):
    salt = b"0123456789abcdef"
    stored_key, server_key = m.scram_keys(password, salt, 4096)
    client, server = m.ScramClient(username, wrong), m.ScramServer()
    server.client_first(client.first())
    final_message = client.final(server.server_first(salt, 4096))
    if wrong == password:
        assert server.client_final(final_message, stored_key, server_key)
    else:
        with pytest.raises(m.ScramProofMismatch):
            server.client_final(final_message, stored_key, server_key)


@FAST
@given(TEXT.filter(lambda t: "\x01" not in t), st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~+/", min_size=1))
def test_bearer_messages_round_trip(username, token):
    xoauth2 = f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
    assert m.parse_xoauth2(xoauth2) == m.BearerCredentials(username, token)
    encoded = username.replace("=", "=3D").replace(",", "=2C")
    oauthbearer = f"n,a={encoded},\x01auth=Bearer {token}\x01\x01".encode()
    assert m.parse_oauthbearer(oauthbearer) == m.BearerCredentials(username, token)
