"""Test vectors: SCRAM-SHA-256 (RFC 7677), CRAM-MD5 (RFC 2195), our MD5 against hashlib."""

import base64
import hashlib
import hmac
import os
import random

import pytest

from mailadmin.accounts import credentials, md5state


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@pytest.mark.embedded
def test_scram_verifier_matches_rfc7677_example():
    # RFC 7677 section 3: user "user", password "pencil".
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = credentials.make_scram_verifier("pencil", salt=salt, iterations=4096)
    client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    client_final_without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = f"{client_first_bare},{server_first},{client_final_without_proof}".encode()

    client_proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    # What the server does with only the stored verifier:
    client_signature = hmac.new(verifier.stored_key, auth_message, hashlib.sha256).digest()
    client_key = _xor(client_proof, client_signature)
    assert hashlib.sha256(client_key).digest() == verifier.stored_key
    server_signature = hmac.new(verifier.server_key, auth_message, hashlib.sha256).digest()
    assert base64.b64encode(server_signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_refuses_fewer_than_4096_iterations():
    with pytest.raises(ValueError):
        credentials.make_scram_verifier("pencil", iterations=1000)


def test_scram_verifier_has_random_salt_and_default_iterations(settings):
    one = credentials.make_scram_verifier("pencil")
    two = credentials.make_scram_verifier("pencil")
    assert one.salt != two.salt and one.stored_key != two.stored_key
    assert one.iterations == settings.SCRAM_ITERATIONS >= 4096


def test_saslprep_maps_spaces_and_normalises():
    assert credentials.saslprep("I\u00adX") == "IX"  # soft hyphen is mapped to nothing
    assert credentials.saslprep("user\u00a0name") == "user name"  # non-ASCII space → space
    assert credentials.saslprep("\u2168") == "IX"  # NFKC: roman numeral nine
    assert credentials.saslprep("plain ascii") == "plain ascii"
    # Prohibited characters (a control character): the password is used unchanged.
    assert credentials.saslprep("a\u0007b\u00e9") == "a\u0007b\u00e9"


@pytest.mark.embedded
def test_cram_md5_rfc2195_example():
    state = md5state.hmac_md5_state(b"tanstaaftanstaaf")
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert md5state.hmac_md5_from_state(state, challenge).hex() == "b913a602c7eda7a495b4e6e7334d3890"


def test_md5_state_matches_hmac_for_random_inputs():
    rng = random.Random(2195)
    for _ in range(300):
        key = os.urandom(rng.randrange(0, 150))
        message = os.urandom(rng.randrange(0, 300))
        state = md5state.hmac_md5_state(key)
        assert md5state.hmac_md5_from_state(state, message) == hmac.new(key, message, "md5").digest()


def test_md5_compression_matches_hashlib():
    for length in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000):
        data = os.urandom(length)
        assert md5state.finish(md5state._INIT, data, 0) == hashlib.md5(data).digest()
