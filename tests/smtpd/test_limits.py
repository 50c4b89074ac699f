"""Abuse limits, bad input, outages, PROXY protocol, workers, SIGTERM: each against a real server process."""

import base64
import contextlib
import mailbox
import signal
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.cache import cache

from mailadmin.accounts.mailboxes import create_mailbox
from mailadmin.accounts.models import Mailbox
from mailadmin.monitoring.blocks import bump_version, create_block, lift_block
from mailadmin.monitoring.models import Block
from smtpd.limits import _sent_key

from .conftest import ALICE, PASSWORD, WRONG_PASSWORD, RawClient, committed_call, server_database_url

pytestmark = [pytest.mark.django_db, pytest.mark.integration]


def plain(user=ALICE, password=PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def authed(server, listener="tls") -> RawClient:
    client = RawClient(server, listener)
    client.cmd("EHLO client.test")
    assert client.cmd(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"
    return client


def test_per_ip_auth_rate(smtpd_factory, accounts):
    server = smtpd_factory(SMTPD_AUTH_RATE_PER_IP=3)
    client = RawClient(server, "tls")
    client.cmd("EHLO client.test")
    for _ in range(3):
        assert client.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
        client.cmd("*")
    assert client.cmd(f"AUTH PLAIN {plain()}") == "450 4.7.1 Too many authentication attempts, try again later"


def test_a_block_takes_effect_within_a_second_and_is_answered_as_temporary(smtpd_server, accounts):
    assert authed(smtpd_server).cmd("QUIT").startswith("221")
    block = committed_call(lambda: create_block(Block.Kind.IP, "127.0.0.1", reason="test block"))
    try:
        time.sleep(1.0)
        client = RawClient(smtpd_server, "tls")
        client.cmd("EHLO client.test")
        assert client.cmd(f"AUTH PLAIN {plain()}") == "454 4.7.0 Temporary authentication failure"
    finally:
        committed_call(lambda: (lift_block(block), bump_version()))
    time.sleep(1.0)
    authed(smtpd_server)


def test_hourly_send_rate(smtpd_server, accounts):
    limited, _ = committed_call(
        lambda: create_mailbox(accounts["domain"], "limited", password=PASSWORD, send_rate_per_hour=1)
    )
    cache.delete(_sent_key(limited.pk))  # ids repeat between runs of the test database
    client = RawClient(smtpd_server, "tls")
    client.cmd("EHLO client.test")
    assert client.cmd(f"AUTH PLAIN {plain('limited@send.example')}").startswith("235")
    assert client.cmd("MAIL FROM:<limited@send.example>") == "250 2.1.0 Sender OK"
    client.cmd("RCPT TO:<friend@elsewhere.example>")
    client.cmd("DATA")
    assert client.cmd("Subject: one\r\n\r\nbody\r\n.").startswith("250 2.0.0")
    assert client.cmd("MAIL FROM:<limited@send.example>") == "450 4.7.1 Sending rate limit exceeded, try again later"


def test_delivered_message_has_a_received_header_with_esmtpsa(smtpd_server, accounts):
    client = authed(smtpd_server)
    client.cmd("MAIL FROM:<sales@send.example>")
    client.cmd("RCPT TO:<friend@elsewhere.example>")
    client.cmd("DATA")
    assert client.cmd("Subject: received-test\r\n\r\nhello\r\n.").startswith("250 2.0.0")
    box = mailbox.Maildir(smtpd_server.tmp / "var" / "maildir", create=False)
    message = next(m for m in box if m["Subject"] == "received-test")
    received = message["Received"]
    assert "with ESMTPSA" in received
    assert "(authenticated sender: alice@send.example)" in received
    assert "from client.test ([127.0.0.1])" in received
    assert message["Return-Path"] == "<sales@send.example>"


def test_bad_input_gets_replies_or_a_clean_close_and_the_server_lives_on(smtpd_server, accounts):
    client = RawClient(smtpd_server, "tls")
    assert client.cmd(b"\x00\xff\xfe garbage") == "500 5.5.2 Syntax error"
    assert client.cmd(b"EHLO a\x00b") == "500 5.5.2 Syntax error"
    assert client.cmd("FOO bar") == "500 5.5.1 Command unrecognized"
    assert client.cmd("NOOP " + "x" * 5000) == "500 5.5.2 Line too long"
    client.send("EHLO a\r\nNOOP\r\nNOOP\r\nRSET\r\n")  # pipelined
    assert client.reply().startswith("250-")
    assert [client.reply() for _ in range(3)] == ["250 2.0.0 OK"] * 3
    # Half-finished AUTH, then the client vanishes.
    client.cmd("AUTH LOGIN")
    client.send(base64.b64encode(ALICE.encode()) + b"\r\n")
    client.close()
    # Too many errors: closed.
    client = RawClient(smtpd_server, "tls")
    for _ in range(9):
        client.cmd("XYZZY")
    client.send("XYZZY\r\n")
    assert client.reply() == "421 4.7.0 Too many errors, closing connection"
    assert client.closed()
    # A TLS handshake failure on each listener.
    with socket.create_connection(("127.0.0.1", smtpd_server.tls)) as raw:
        raw.sendall(b"this is not a TLS ClientHello\r\n" * 10)
        raw.settimeout(5)
        with contextlib.suppress(ConnectionError, TimeoutError):
            raw.recv(100)
    plain_client = RawClient(smtpd_server, "starttls", tls=False)
    plain_client.cmd("EHLO a")
    assert plain_client.cmd("STARTTLS").startswith("220")
    plain_client.send(b"\x16\x03\x01\x00\x05hello-garbage")
    assert plain_client.closed()
    # TLS 1.0 is refused during the handshake.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with socket.create_connection(("127.0.0.1", smtpd_server.tls)) as raw, pytest.raises(ssl.SSLError):
        old.wrap_socket(raw).recv(10)
    # Still serving, the process never died.
    assert smtpd_server.proc.poll() is None
    authed(smtpd_server, "starttls")
    assert "Traceback" not in smtpd_server.logs()


class SwitchableProxy:
    """A TCP forwarder to PostgreSQL that the test can cut: a real outage from the server's side."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.pairs = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            conn, _ = self.listener.accept()
            if not self.up:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.pairs.append((conn, upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self):
        self.up = False
        for pair in self.pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        self.pairs.clear()

    def restore(self):
        self.up = True


def test_database_outage_gives_454_then_recovers_without_restart(smtpd_factory, accounts):
    url = server_database_url()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    proxy = SwitchableProxy(port)
    server = smtpd_factory(DATABASE_URL=url.replace(f":{port}/", f":{proxy.port}/"))
    authed(server)
    proxy.cut()
    client = RawClient(server, "tls")
    client.cmd("EHLO client.test")
    assert client.cmd(f"AUTH PLAIN {plain(ALICE, WRONG_PASSWORD)}") == "454 4.7.0 Temporary authentication failure"
    assert client.cmd(f"AUTH PLAIN {plain()}") == "454 4.7.0 Temporary authentication failure"
    proxy.restore()
    assert client.cmd(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"


def test_proxy_protocol_only_from_configured_networks(smtpd_factory, accounts):
    server = smtpd_factory(SMTPD_PROXY_NETWORKS="127.0.0.0/8")
    client = RawClient(server, "starttls", proxy=b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 587\r\n")
    client.cmd("EHLO proxied.test")
    assert client.cmd(f"AUTH PLAIN {plain()}").startswith("235")
    client.cmd("MAIL FROM:<alice@send.example>")
    client.cmd("RCPT TO:<friend@elsewhere.example>")
    client.cmd("DATA")
    assert client.cmd("Subject: proxied\r\n\r\nhello\r\n.").startswith("250")
    box = mailbox.Maildir(server.tmp / "var" / "maildir", create=False)
    assert "([203.0.113.9])" in next(m for m in box if m["Subject"] == "proxied")["Received"]
    # From a proxy network, a connection without a PROXY header is closed.
    with socket.create_connection(("127.0.0.1", server.starttls)) as raw:
        raw.sendall(b"EHLO no-proxy-header\r\n")
        raw.settimeout(15)
        assert raw.recv(100) == b""


def test_workers_share_the_ports_and_sigterm_drains(smtpd_factory, accounts):
    server = smtpd_factory(args=["--workers", "2"])
    assert len(server.metrics) == 2
    clients = [authed(server) for _ in range(6)]
    for port in server.metrics:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "smtpd_auth_attempts_total" in body
    session = clients[0]
    session.cmd("MAIL FROM:<alice@send.example>")
    server.signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.tls), timeout=2)
    # The open transaction may finish...
    assert session.cmd("RCPT TO:<friend@elsewhere.example>") == "250 2.1.5 Recipient OK"
    # ...and then the bounded drain ends with 421 for everyone still connected.
    assert clients[1].line() == "421 4.3.2 Service shutting down, try again later"
    assert server.proc.wait(20) == 0


def test_disabled_mailbox_cannot_send(smtpd_server, accounts):
    committed_call(lambda: Mailbox.objects.filter(pk=accounts["alice"].pk).update(state=Mailbox.State.DISABLED))
    client = RawClient(smtpd_server, "tls")
    client.cmd("EHLO client.test")
    assert client.cmd(f"AUTH PLAIN {plain()}") == "535 5.7.8 Authentication credentials invalid"


def test_a_cached_success_is_answered_while_failures_wait_for_argon2(smtpd_factory, accounts):
    """Successes the verifier can answer from its cache (and sender checks) have a
    thread pool of their own: with every verify thread busy with (deliberately slow)
    Argon2 checks of failures, a repeat login and its MAIL FROM are still answered
    before almost all of them."""
    server = smtpd_factory(
        SMTPD_THREADS=2,
        VERIFY_CONCURRENCY=1,
        SMTPD_AUTH_FAIL_DELAY=0,
        SMTP_ARGON2_MEMORY_COST=32768,  # the dummy hash for unknown users: ~0.1 s or more each
        SMTP_ARGON2_TIME_COST=3,
    )
    assert authed(server).cmd("QUIT").startswith("221")  # alice's secret is now in the cache
    failing = [RawClient(server, "tls") for _ in range(8)]
    fast = RawClient(server, "tls")
    for client in [*failing, fast]:
        client.cmd("EHLO client.test")
    answered: list[tuple[float, str]] = []

    def fail(i, client):
        client.send(f"AUTH PLAIN {plain(f'nobody{i}@send.example', WRONG_PASSWORD)}\r\n")
        reply = client.reply()
        answered.append((time.monotonic(), reply))

    threads = [threading.Thread(target=fail, args=(i, c)) for i, c in enumerate(failing)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # the failures are queued in the server
    assert fast.cmd(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"
    # The sender check (a database read) does not wait behind them either.
    assert fast.cmd(f"MAIL FROM:<{ALICE}>") == "250 2.1.0 Sender OK"
    success_at = time.monotonic()
    for thread in threads:
        thread.join(60)
    assert len(answered) == 8 and all(reply.startswith("535 5.7.8") for _, reply in answered)
    before = sum(1 for at, _ in answered if at < success_at)
    # Behind them in one FIFO it would wait for at least 6 of the 8 (2 threads, 1 Argon2 slot).
    assert before <= 2, f"{before} failures were answered before the cached success"


def test_argon2_runs_on_lower_priority_threads(smtpd_factory, accounts):
    """Argon2 work (here: a wrong password) runs on threads niced by SMTPD_ARGON2_NICE;
    the event loop's thread keeps the process's priority."""
    ARGON2_NICE = 7
    server = smtpd_factory(VERIFY_CONCURRENCY=1, SMTPD_ARGON2_NICE=ARGON2_NICE)
    client = RawClient(server, "tls")
    client.cmd("EHLO client.test")
    assert client.cmd(f"AUTH PLAIN {plain(ALICE, WRONG_PASSWORD)}").startswith("535 5.7.8")
    tasks = Path(f"/proc/{server.proc.pid}/task")
    nice = {int(t.name): int((t / "stat").read_text().rsplit(")", 1)[1].split()[16]) for t in tasks.iterdir()}
    base = nice[server.proc.pid]
    assert sorted(n - base for n in nice.values()).count(ARGON2_NICE) == 1  # VERIFY_CONCURRENCY threads
    assert all(n in (base, base + ARGON2_NICE) for n in nice.values())
