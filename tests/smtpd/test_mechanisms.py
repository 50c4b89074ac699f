"""The SASL parsers and state machines, without a socket."""

import base64
import hashlib
import hmac

import pytest

from smtpd import mechanisms as m

pytestmark = pytest.mark.embedded

# RFC 7677 section 3 test vector.
RFC_USER, RFC_PASSWORD = "user", "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_it_decodes_base64_strictly():
    assert m.b64decode_strict(b"AGEAYg==") == b"\x00a\x00b"
    assert m.b64decode_strict(b"=") == b""
    for bad in (b"!!!", b"AGEAY", b"AG\x00EA"):
        with pytest.raises(m.Malformed):
            m.b64decode_strict(bad)


def test_it_parses_plain():
    creds = m.parse_plain(b"\x00alice@a.example\x00secret")
    assert (creds.authzid, creds.username, creds.password) == ("", "alice@a.example", "secret")
    assert m.parse_plain(b"bob\x00alice\x00pw").authzid == "bob"
    for bad in (b"alice\x00pw", b"\x00\x00pw", b"\x00alice\x00", b"\x00al\xffice\x00pw", b"a\x00b\x00c\x00d"):
        with pytest.raises(m.Malformed):
            m.parse_plain(bad)


def test_it_parses_cram_responses():
    assert m.parse_cram_response(b"alice@a.example " + b"A" * 32) == ("alice@a.example", "a" * 32)
    for bad in (b"alice", b"alice xyz", b" " + b"a" * 32, b"alice " + b"g" * 32):
        with pytest.raises(m.Malformed):
            m.parse_cram_response(bad)
    challenge = m.cram_challenge("mx.example")
    assert challenge.startswith(b"<") and challenge.endswith(b"@mx.example>")
    assert m.cram_digest(b"k", b"c") == hmac.new(b"k", b"c", hashlib.md5).hexdigest()


def test_scram_server_passes_the_rfc_7677_vector():
    stored_key, server_key = m.scram_keys(RFC_PASSWORD, RFC_SALT, 4096)
    server = m.ScramServer(server_nonce=RFC_SERVER_NONCE)
    assert server.client_first(f"n,,n=user,r={RFC_CLIENT_NONCE}".encode()) == RFC_USER
    assert server.server_first(RFC_SALT, 4096) == (
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    assert server.client_final(RFC_CLIENT_FINAL, stored_key, server_key) == RFC_SERVER_FINAL


def test_scram_client_passes_the_rfc_7677_vector():
    client = m.ScramClient(RFC_USER, RFC_PASSWORD, client_nonce=RFC_CLIENT_NONCE)
    assert client.first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert client.final(server_first) == RFC_CLIENT_FINAL
    assert client.verify_server(RFC_SERVER_FINAL)
    assert not client.verify_server(b"v=AAAA")


def test_scram_rejects_a_wrong_password_and_bad_messages():
    salt = b"0123456789abcdef"
    stored_key, server_key = m.scram_keys("right", salt, 4096)
    server = m.ScramServer()
    client = m.ScramClient("a,b=c", "wrong")
    assert server.client_first(client.first()) == "a,b=c"
    final = client.final(server.server_first(salt, 4096))
    with pytest.raises(m.ScramProofMismatch):
        server.client_final(final, stored_key, server_key)
    bad_first = (b"p=tls,,n=u,r=abc", b"x,,n=u,r=abc", b"n,,r=abc", b"n,,n=u", b"n,,m=e,n=u,r=a", b"n,,n=a=2X,r=a")
    for bad in bad_first:
        with pytest.raises(m.Malformed):
            m.ScramServer().client_first(bad)
    server = m.ScramServer()
    server.client_first(b"n,,n=u,r=abc")
    server.server_first(salt, 4096)
    for bad in (b"c=biws,r=wrongnonce,p=AAAA", b"c=eSws,r=abc,p=AAAA", b"c=biws,r=abc", b"c=biws,r=abc,p=!!"):
        with pytest.raises(m.Malformed):
            server.client_final(bad, stored_key, server_key)
