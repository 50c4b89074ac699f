"""SASL mechanisms as pure functions and small state machines (no I/O).

The SMTP session feeds them decoded client blobs and sends what they return;
everything here is unit-testable without a socket. Parsing errors raise
`Malformed` with a short reason that is safe to log (never the blob itself).
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field


class Malformed(ValueError):
    """The client sent something the mechanism cannot parse."""


def b64decode_strict(data: bytes | str) -> bytes:
    """Decode a base64 AUTH blob; "=" alone is the RFC 4954 empty response."""
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    data = data.strip()
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed("undecodable base64") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text(raw: bytes, what: str) -> str:
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"{what} is not UTF-8") from None
    if "\x00" in value:
        raise Malformed(f"{what} contains NUL")
    return value


# --- PLAIN (RFC 4616) ---


@dataclass(frozen=True)
class PlainCredentials:
    authzid: str
    username: str
    password: str


def parse_plain(blob: bytes) -> PlainCredentials:
    parts = blob.split(b"\x00")
    if len(parts) != 3:
        raise Malformed("PLAIN needs authzid NUL authcid NUL passwd")
    authzid, username, password = (_text(parts[0], "authzid"), _text(parts[1], "authcid"), _text(parts[2], "passwd"))
    if not username or not password:
        raise Malformed("PLAIN with empty authcid or passwd")
    return PlainCredentials(authzid, username, password)


# --- LOGIN (draft-murchison-sasl-login) ---

LOGIN_USERNAME_PROMPT = b"Username:"
LOGIN_PASSWORD_PROMPT = b"Password:"


def parse_login_field(blob: bytes, what: str) -> str:
    value = _text(blob, what)
    if not value:
        raise Malformed(f"empty {what}")
    return value


# --- CRAM-MD5 (RFC 2195) ---


def cram_challenge(hostname: str) -> bytes:
    return f"<{secrets.randbits(64)}.{int(time.time())}@{hostname}>".encode("ascii", "replace")


def parse_cram_response(blob: bytes) -> tuple[str, str]:
    """Returns (username, lowercase hex digest)."""
    text = _text(blob, "response")
    username, sep, digest = text.rpartition(" ")
    digest = digest.lower()
    if not sep or not username or len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):
        raise Malformed("CRAM-MD5 response is not 'user hexdigest'")
    return username, digest


def cram_digest(secret: bytes, challenge: bytes) -> str:
    """The client side (tests, benchmark); the server checks via the accounts verifier."""
    return hmac.new(secret, challenge, hashlib.md5).hexdigest()


# --- SCRAM-SHA-256 (RFC 5802, RFC 7677) ---


def _saslname_decode(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == ",":
            raise Malformed("bare comma in saslname")
        if value[i] == "=":
            code = value[i : i + 3]
            if code == "=2C":
                out.append(",")
            elif code == "=3D":
                out.append("=")
            else:
                raise Malformed("bad escape in saslname")
            i += 3
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


def _saslname_encode(value: str) -> str:
    return value.replace("=", "=3D").replace(",", "=2C")


def _attributes(message: str) -> list[tuple[str, str]]:
    pairs = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=":
            raise Malformed("SCRAM attribute is not 'x=value'")
        pairs.append((part[0], part[2:]))
    return pairs


def _printable_nonce(nonce: str) -> bool:
    return bool(nonce) and all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) for a password; clients and fixtures only."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = _hmac(salted, b"Client Key")
    return hashlib.sha256(client_key).digest(), _hmac(salted, b"Server Key")


class ScramServer:
    """One SCRAM-SHA-256 exchange, server side.

    client_first() -> username; server_first(salt, iterations) -> bytes to send;
    client_final(msg, stored_key, server_key) -> server-final bytes, or raises
    `ScramProofMismatch` when the proof is wrong.
    """

    def __init__(self, server_nonce: str | None = None):
        self._server_nonce = server_nonce or b64encode(os.urandom(18))
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self.authzid = ""

    def client_first(self, blob: bytes) -> str:
        text = _text(blob, "client-first-message")
        flag, sep, rest = text.partition(",")
        if not sep:
            raise Malformed("no GS2 header")
        if flag.startswith("p="):
            raise Malformed("channel binding requested but not offered")
        if flag not in ("n", "y"):
            raise Malformed("bad GS2 channel-binding flag")
        authzid_field, sep, bare = rest.partition(",")
        if not sep:
            raise Malformed("no client-first-message-bare")
        if authzid_field:
            if not authzid_field.startswith("a="):
                raise Malformed("bad GS2 authzid")
            self.authzid = _saslname_decode(authzid_field[2:])
        self._gs2_header = f"{flag},{authzid_field},"
        attrs = _attributes(bare)
        if attrs[0][0] == "m":
            raise Malformed("mandatory extension not supported")
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise Malformed("client-first-message-bare needs n= and r=")
        username = _saslname_decode(attrs[0][1])
        client_nonce = attrs[1][1]
        if not username or not _printable_nonce(client_nonce):
            raise Malformed("empty username or bad nonce")
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        return username

    def server_first(self, salt: bytes, iterations: int) -> bytes:
        self._server_first = f"r={self._nonce},s={b64encode(salt)},i={iterations}"
        return self._server_first.encode("ascii")

    def client_final(self, blob: bytes, stored_key: bytes, server_key: bytes) -> bytes:
        text = _text(blob, "client-final-message")
        without_proof, sep, proof_attr = text.rpartition(",p=")
        if not sep:
            raise Malformed("client-final-message has no proof")
        attrs = dict(_attributes(without_proof))
        try:
            channel_binding = base64.b64decode(attrs.get("c", ""), validate=True).decode("utf-8")
            proof = base64.b64decode(proof_attr, validate=True)
        except (binascii.Error, ValueError):
            raise Malformed("bad base64 in client-final-message") from None
        if channel_binding != self._gs2_header:
            raise Malformed("channel binding does not match GS2 header")
        if attrs.get("r") != self._nonce:
            raise Malformed("nonce mismatch")
        if len(proof) != hashlib.sha256().digest_size:
            raise Malformed("proof has the wrong length")
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        client_signature = _hmac(stored_key, auth_message)
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key):
            raise ScramProofMismatch()
        return f"v={b64encode(_hmac(server_key, auth_message))}".encode("ascii")


class ScramProofMismatch(Exception):
    """Wrong password (or unknown user answered with a fake salt)."""


class ScramClient:
    """The client side, for tests and the benchmark (checked against RFC 7677)."""

    def __init__(self, username: str, password: str, client_nonce: str | None = None):
        self.username = username
        self.password = password
        self.client_nonce = client_nonce or b64encode(os.urandom(18))
        self._client_first_bare = f"n={_saslname_encode(username)},r={self.client_nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self._client_first_bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = dict(_attributes(text))
        nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        if not nonce.startswith(self.client_nonce):
            raise Malformed("server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c={b64encode(b'n,,')},r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={b64encode(proof)}".encode()

    def verify_server(self, server_final: bytes) -> bool:
        return hmac.compare_digest(server_final, b"v=" + base64.b64encode(self._server_signature))


# --- OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's older framing of the same bearer token) ---

OAUTH_KVSEP = "\x01"


@dataclass(frozen=True)
class BearerCredentials:
    username: str  # "" when an OAUTHBEARER client names nobody: the token's mailbox is meant
    token: str = field(repr=False)


def _bearer_token(value: str) -> str:
    scheme, sep, token = value.partition(" ")
    token = token.strip(" ")
    if not sep or scheme.lower() != "bearer" or not token:
        raise Malformed("auth is not 'Bearer <token>'")
    return token


def _kv_pairs(body: str) -> dict[str, str]:
    """key=value items, each followed by ^A (the terminating ^A already removed)."""
    if not body:
        return {}
    if not body.endswith(OAUTH_KVSEP):
        raise Malformed("key/value list is not terminated")
    pairs = {}
    for item in body[:-1].split(OAUTH_KVSEP):
        key, sep, value = item.partition("=")
        if not sep or not key.isalpha():
            raise Malformed("key/value item is not 'key=value'")
        pairs[key.lower()] = value
    return pairs


def parse_oauthbearer(blob: bytes) -> BearerCredentials:
    """gs2-header ^A *(key=value ^A) ^A, e.g. b"n,a=user@example.com,^Aauth=Bearer T^A^A"."""
    text = _text(blob, "OAUTHBEARER message")
    gs2, sep, rest = text.partition(OAUTH_KVSEP)
    if not sep or not rest.endswith(OAUTH_KVSEP):
        raise Malformed("OAUTHBEARER needs a GS2 header and a ^A-terminated key/value list")
    fields = gs2.split(",")
    if len(fields) != 3 or fields[2] != "":
        raise Malformed("bad GS2 header")
    flag, authzid = fields[0], fields[1]
    if flag.startswith("p="):
        raise Malformed("channel binding requested but not offered")
    if flag not in ("n", "y"):
        raise Malformed("bad GS2 channel-binding flag")
    username = ""
    if authzid:
        if not authzid.startswith("a="):
            raise Malformed("bad GS2 authzid")
        username = _saslname_decode(authzid[2:])
    pairs = _kv_pairs(rest[:-1])
    if "auth" not in pairs:
        raise Malformed("no auth=Bearer item")
    return BearerCredentials(username, _bearer_token(pairs["auth"]))


def parse_xoauth2(blob: bytes) -> BearerCredentials:
    """b"user=" user ^A "auth=Bearer " token ^A ^A."""
    text = _text(blob, "XOAUTH2 message")
    if not text.endswith(OAUTH_KVSEP * 2):
        raise Malformed("XOAUTH2 message is not terminated by ^A^A")
    pairs = _kv_pairs(text[:-1])
    if not pairs.get("user") or "auth" not in pairs:
        raise Malformed("XOAUTH2 needs user= and auth=")
    return BearerCredentials(pairs["user"], _bearer_token(pairs["auth"]))


def bearer_error(mechanism: str, discovery_url: str) -> bytes:
    """The JSON error challenge sent before the failure reply (RFC 7628 3.2.2;
    Google's XOAUTH2 documentation). The client answers ^A / an empty line."""
    if mechanism == "OAUTHBEARER":
        body = {"status": "invalid_token", "scope": "smtp", "openid-configuration": discovery_url}
    else:
        body = {"status": "401", "schemes": "bearer", "scope": "smtp"}
    return json.dumps(body, separators=(",", ":")).encode("ascii")
