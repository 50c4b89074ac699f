"""HMAC-MD5 from a saved intermediate state, for CRAM-MD5 (RFC 2195).

THE ONE PLACE WE HAND-WRITE CRYPTO. CRAM-MD5 needs HMAC-MD5(password, challenge)
at verification time, but storing the password is not acceptable. Like Dovecot's
CRAM-MD5 scheme we store only the two MD5 states after absorbing the 64-byte
blocks key XOR ipad and key XOR opad (still password-equivalent for CRAM-MD5,
hence encrypted at rest). Python's hashlib cannot export or resume an MD5
context, so this module has a small pure-Python MD5 compression function
(RFC 1321) to finish the two hashes from those states. It is tested against
hashlib.md5 / hmac for random inputs and against RFC 2195's example.
Speed is irrelevant here: one challenge is a few blocks.
"""

from __future__ import annotations

import hashlib
import math
import struct

_INIT = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_K = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]
_MASK = 0xFFFFFFFF
BLOCK = 64


def _rotl(x: int, c: int) -> int:
    return ((x << c) | (x >> (32 - c))) & _MASK


def compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    """One MD5 compression of a 64-byte block into a state (A, B, C, D)."""
    assert len(block) == BLOCK
    m = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | (~d & _MASK)), (7 * i) % 16
        f = (f + a + _K[i] + m[g]) & _MASK
        a, d, c = d, c, b
        b = (b + _rotl(f, _SHIFTS[i])) & _MASK
    return tuple((x + y) & _MASK for x, y in zip(state, (a, b, c, d), strict=True))


def finish(state: tuple[int, int, int, int], data: bytes, prefix_len: int) -> bytes:
    """The MD5 digest of (prefix || data), given the state after the prefix
    (prefix_len bytes, a multiple of 64)."""
    assert prefix_len % BLOCK == 0
    total_bits = ((prefix_len + len(data)) * 8) & 0xFFFFFFFFFFFFFFFF
    padded = data + b"\x80" + b"\x00" * ((55 - len(data)) % BLOCK) + struct.pack("<Q", total_bits)
    for i in range(0, len(padded), BLOCK):
        state = compress(state, padded[i : i + BLOCK])
    return struct.pack("<4I", *state)


def hmac_md5_state(key: bytes) -> bytes:
    """The 32-byte CRAM-MD5 secret: MD5 states after key^ipad and key^opad."""
    if len(key) > BLOCK:
        key = hashlib.md5(key).digest()  # noqa: S324 - MD5 is what RFC 2104/2195 specify
    key = key.ljust(BLOCK, b"\x00")
    inner = compress(_INIT, bytes(k ^ 0x36 for k in key))
    outer = compress(_INIT, bytes(k ^ 0x5C for k in key))
    return struct.pack("<8I", *inner, *outer)


def hmac_md5_from_state(secret: bytes, message: bytes) -> bytes:
    """HMAC-MD5(key, message) from the 32-byte state made by hmac_md5_state(key)."""
    if len(secret) != 32:
        raise ValueError("a CRAM-MD5 state is 32 bytes")
    words = struct.unpack("<8I", secret)
    inner = finish(words[:4], message, BLOCK)
    return finish(words[4:], inner, BLOCK)
