"""A grammar-based fuzzer for the SMTP command and AUTH dialogue, shared by the
bounded test (tests/security/test_smtp_fuzz.py) and the long run (bench/fuzz_smtp.py).

A dialogue is a list of raw lines: real commands with hostile arguments, AUTH with
every mechanism and junk or almost-right base64 continuations, overlong lines, NUL
and 8-bit bytes, bare CR/LF. `run_dialogue` plays one against a live server over a
socket and returns what was wrong with the replies (an empty list when nothing was).
"""

import base64
import re
import socket
import ssl

from hypothesis import strategies as st

MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2", "OAUTHBEARER", "plain", "GSSAPI", "X"]
REPLY_LINE = re.compile(rb"^[2-5]\d\d([ -].*)?$")
# aiosmtpd's answer when a handler raised: the sign of an unhandled exception.
CRASH_REPLY = re.compile(rb"^5\d\d Error: \(")


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


junk_bytes = st.binary(max_size=120)
saslish = st.lists(
    st.sampled_from(
        [
            b"\x00",
            b"alice@send.example",
            b"user",
            b"n,,",
            b"n=",
            b"r=",
            b",",
            b"p=",
            b"c=biws",
            b"\x01",
            b"auth=Bearer ",
            b"user=",
            b"a=",
            b"=2C",
            b"\xff\xfe",
            b"x" * 600,
            b"0123456789abcdef" * 2,
            b" ",
        ]
    ),
    max_size=12,
).map(b"".join)
continuation = st.one_of(
    saslish.map(_b64),  # well-formed base64 of almost-right SASL messages
    junk_bytes.map(_b64),
    st.sampled_from([b"*", b"=", b"", b"====", b"not base64!", b"QUJD\x00", b"\xc3\x28"]),
    junk_bytes,
)
argument = st.one_of(
    st.sampled_from(
        [
            b"",
            b"<>",
            b"<alice@send.example>",
            b"<a@b>",
            b"SIZE=999999999999",
            b"BODY=8BITMIME",
            b"SMTPUTF8",
            b"AUTH=<>",
            b"<\xff@x>",
            b"<" + b"a" * 1000 + b"@x>",
        ]
    ),
    junk_bytes.filter(lambda b: b"\r" not in b and b"\n" not in b),
)
command = st.one_of(
    st.builds(lambda verb, arg: verb + b" " + arg, st.sampled_from([b"EHLO", b"HELO", b"ehlo", b"LHLO"]), argument),
    st.builds(
        lambda mech, arg: b"AUTH " + mech.encode() + (b" " + arg if arg else b""),
        st.sampled_from(MECHANISMS),
        st.one_of(st.just(b""), continuation),
    ),
    st.builds(
        lambda verb, arg: verb + b" " + arg,
        st.sampled_from([b"MAIL FROM:", b"RCPT TO:", b"VRFY", b"EXPN", b"HELP", b"NOOP"]),
        argument,
    ),
    st.sampled_from(
        [
            b"RSET",
            b"NOOP",
            b"DATA",
            b".",
            b"BDAT 10",
            b"AUTH",
            b"AUTH ",
            b"HELO",
            b"QUIT",
            b"\x00",
            b"",
            b"x" * 5000,
            b"AUTH PLAIN " + b"A" * 20000,
            b"EHLO \xff\xfe\x00",
            b"\r",
            b"\n",
        ]
    ),
    continuation,
)
dialogue = st.lists(command, min_size=1, max_size=12)


def read_reply(sock, timeout=3.0) -> list[bytes] | None:
    """The reply's lines, or None when the server closed the connection."""
    sock.settimeout(timeout)
    buffer = b""
    lines = []
    while True:
        while b"\r\n" not in buffer:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return lines or [b"(no reply within timeout)"]
            if not chunk:
                return lines or None
            buffer += chunk
        line, buffer = buffer.split(b"\r\n", 1)
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return lines


def check_reply(lines, sent) -> list[str]:
    problems = []
    for line in lines:
        if not REPLY_LINE.match(line) and line != b"(no reply within timeout)":
            problems.append(f"malformed reply {line[:80]!r} to {sent[:60]!r}")
        if CRASH_REPLY.match(line):
            problems.append(f"unhandled exception reply {line[:120]!r} to {sent[:60]!r}")
    return problems


def connect(port: int, tls: bool, host="127.0.0.1"):
    """A socket to the server; tls=True for the implicit-TLS listener (AUTH needs TLS)."""
    sock = socket.create_connection((host, port), timeout=5)
    if not tls:
        return sock
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's self-signed development certificate
    return context.wrap_socket(sock, server_hostname=host)


def run_dialogue(port: int, lines: list[bytes], tls=True, host="127.0.0.1") -> list[str]:
    problems = []
    with connect(port, tls, host) as sock:
        greeting = read_reply(sock)
        if not greeting or not greeting[-1].startswith(b"220"):
            return [f"no 220 greeting: {greeting!r}"]
        for line in lines:
            try:
                sock.sendall(line + b"\r\n")
            except OSError:
                break  # the server closed on us (421 after too much junk): fine
            reply = read_reply(sock)
            if reply is None:
                break
            problems += check_reply(reply, line)
            if any(r.startswith((b"421", b"221")) for r in reply):
                break
            if line.upper().startswith(b"STARTTLS") and reply[-1].startswith(b"220"):
                break  # a TLS handshake would follow; not this fuzzer's business
    return problems


def server_is_healthy(port: int, tls=True, host="127.0.0.1") -> bool:
    with connect(port, tls, host) as sock:
        greeting = read_reply(sock)
        sock.sendall(b"EHLO fuzz.example\r\n")
        reply = read_reply(sock)
        return bool(greeting and greeting[-1].startswith(b"220") and reply and reply[-1].startswith(b"250"))
