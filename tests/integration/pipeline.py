"""The whole monitoring pipeline as real processes, for tests/integration and bench/latency.py.

    smtplib client (any 127.0.0.0/8 source address) ──► python -m smtpd ──► Redis (broker)
    ──► celery worker -Q ingest,alerts ──► PostgreSQL; blocks reach the smtpd through the
    Redis cache's version stamp; alert emails go to an aiosmtpd listener (Inbox) on loopback.

Linux routes the whole 127.0.0.0/8 to the loopback interface, so binding the client
socket to 127.x.y.z gives each simulated source its own address with no PROXY header.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Received:
    """One message accepted by the Inbox (at = time.monotonic() of the DATA acceptance)."""

    at: float
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    message: email.message.EmailMessage = field(repr=False)

    @property
    def subject(self) -> str:
        return str(self.message["Subject"] or "")

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else ""


class Inbox:
    """A real SMTP listener (aiosmtpd Controller) on 127.0.0.1 that keeps what it accepts."""

    def __init__(self, port: int):
        self.port = port
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._controller = Controller(self, hostname="127.0.0.1", port=port)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd hook name)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        item = Received(time.monotonic(), envelope.mail_from, list(envelope.rcpt_tos), envelope.content, message)
        with self._cond:
            self.messages.append(item)
            self._cond.notify_all()
        return "250 2.0.0 Accepted"

    def start(self) -> Inbox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def wait_for(self, predicate, timeout: float) -> Received | None:
        """The first message matching predicate, waiting up to timeout seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in self.messages:
                    if predicate(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)


def pipeline_env(base: dict, *, broker_url: str, cache_url: str, mail_port: int, **extra) -> dict:
    """Environment shared by the smtpd and the worker: one broker, one cache (block
    version stamps), alert mail to the Inbox."""
    env = dict(base)
    env.update(
        {
            "CELERY_BROKER_URL": broker_url,
            "CACHE_URL": cache_url,
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(mail_port),
            "DEFAULT_FROM_EMAIL": "Mailadmin <mailadmin@admin.send.example>",
            "SITE_URL": "https://admin.send.example",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class CeleryWorker:
    """`celery -A mailadmin worker -Q ingest,alerts`, the production queues, in its own process group."""

    def __init__(self, env: dict, log_path: Path, *, concurrency: int = 2):
        self.env, self.log_path, self.concurrency = env, log_path, concurrency
        self.proc = None
        self._log = None

    def start(self) -> CeleryWorker:
        self._log = open(self.log_path, "a")  # noqa: SIM115 (open for the worker's life)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "mailadmin", "worker", "-Q", "ingest,alerts"]
            + ["-c", str(self.concurrency), "--without-gossip", "--without-mingle", "--without-heartbeat"]
            + ["--loglevel", "INFO"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.logs():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"celery worker did not start:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def auth_plain(port: int, source_ip: str, username: str, passwords: list[str], helo: str = "client.test"):
    """One implicit-TLS connection from source_ip; AUTH PLAIN once per password (smtplib,
    one mechanism only: login() would retry with LOGIN). Returns [(code, reply text)].
    Stops early when the server closes the connection (its per-connection failure limit)."""
    replies = []
    client = smtplib.SMTP_SSL("127.0.0.1", port, source_address=(source_ip, 0), context=_context(), timeout=10)
    try:
        client.ehlo(helo)
        for password in passwords:
            client.user, client.password = username, password
            try:
                code, text = client.auth("PLAIN", client.auth_plain)
            except smtplib.SMTPAuthenticationError as exc:
                code, text = exc.smtp_code, exc.smtp_error
            except smtplib.SMTPServerDisconnected:
                break
            replies.append((code, text.decode(errors="replace") if isinstance(text, bytes) else text))
    finally:
        with suppress(smtplib.SMTPException, OSError):
            client.quit()
        client.close()
    return replies


def attack(port: int, source_ip: str, username: str, passwords: list[str], per_connection: int = 3):
    """Failed AUTHs in connections of at most per_connection attempts (the smtpd closes after 3)."""
    replies = []
    for start in range(0, len(passwords), per_connection):
        chunk = passwords[start : start + per_connection]
        replies += auth_plain(port, source_ip, username, chunk, helo="attacker.test")
    return replies


def wait_until_blocked(port: int, source_ip: str, username: str, password: str, timeout: float, step: float = 0.02):
    """AUTH from source_ip until the smtpd answers 454; returns (monotonic time of that reply, reply) or None.

    Probes over one connection while the server allows (SMTPD_MAX_AUTH_FAILURES), then a new one."""
    deadline = time.monotonic() + timeout
    client = None
    try:
        while time.monotonic() < deadline:
            if client is None:
                client = smtplib.SMTP_SSL(
                    "127.0.0.1", port, source_address=(source_ip, 0), context=_context(), timeout=10
                )
                client.ehlo("attacker.test")
            client.user, client.password = username, password
            try:
                code, text = client.auth("PLAIN", client.auth_plain)
            except smtplib.SMTPAuthenticationError as exc:
                code, text = exc.smtp_code, exc.smtp_error
            except smtplib.SMTPServerDisconnected:
                client.close()
                client = None
                continue
            if code == 454:
                return time.monotonic(), f"{code} {text.decode(errors='replace')}"
            if code == 235:  # the right password, still let in: the next probe needs a new session
                with suppress(smtplib.SMTPException, OSError):
                    client.quit()
                client.close()
                client = None
            time.sleep(step)
        return None
    finally:
        if client is not None:
            with suppress(smtplib.SMTPException, OSError):
                client.quit()
            client.close()
