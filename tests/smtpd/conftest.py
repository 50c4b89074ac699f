"""smtpd test harness: the real server as a subprocess on ephemeral ports, talking
to the test database and Redis; clients over real sockets (smtplib, raw lines, swaks).

Data the server must see is committed (transactional_db); the server process is
stopped before pytest-django drops the test database.
"""

import functools
import os
import re
import select
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection, connections

from mailadmin.accounts import verify
from mailadmin.accounts.mailboxes import add_alias, create_mailbox
from mailadmin.accounts.models import Domain

ROOT = Path(__file__).resolve().parents[2]
TEST_FERNET_KEY = "hK0mRj2sVq3mIYl4o8w7bQxg9m0r3Zt7yJw2c4l5kVg="
PASSWORD = "violet-anchor-Harbour-91-drift"  # searched for in the server's logs
OTHER_PASSWORD = "copper-Lantern-47-meadow-quiet"
WRONG_PASSWORD = "definitely-Wrong-password-000"
SECRETS = (PASSWORD, OTHER_PASSWORD, WRONG_PASSWORD)


def server_database_url() -> str:
    s = connection.settings_dict
    if "postgresql" not in s["ENGINE"]:
        pytest.skip("the smtpd subprocess tests need PostgreSQL (run by make test)")
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


class SmtpdProcess:
    """`python -m smtpd` on ephemeral ports; logs captured to a file."""

    def __init__(self, tmp: Path, env: dict, args=()):
        self.tmp = tmp
        self.log_path = tmp / "smtpd.log"
        self.env = env
        self.args = list(args)
        self.proc = None
        self.starttls = self.tls = None
        self.metrics = []

    def start(self) -> "SmtpdProcess":
        cmd = [sys.executable, "-m", "smtpd", "--listen", "127.0.0.1:0", "--tls-listen", "127.0.0.1:0", *self.args]
        self._log = open(self.log_path, "a")  # noqa: SIM115 (open for the life of the process)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._log, text=True, start_new_session=True
        )
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if "smtpd ready" in line:
                    break
            if self.proc.poll() is not None:
                break
        else:
            line = ""
        if "smtpd ready" not in line:
            self.stop()
            raise RuntimeError(f"smtpd did not start: {line!r}\n{self.log_path.read_text()[-3000:]}")
        self.starttls = _port(line, "starttls")
        self.tls = _port(line, "tls")
        self.metrics = [int(p.rsplit(":", 1)[1]) for p in re.search(r"metrics=(\S+)", line).group(1).split(",")]
        self.pid_line = line
        return self

    def port(self, listener: str) -> int:
        return self.starttls if listener == "starttls" else self.tls

    def signal(self, signum=signal.SIGTERM):
        self.proc.send_signal(signum)

    def stop(self, timeout=20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def _port(line: str, name: str) -> int:
    return int(re.search(rf"\b{name}=[^ ]*:(\d+)", line).group(1))


def server_env(tmp: Path, **overrides) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": server_database_url(),
            "VAR_DIR": str(tmp / "var"),
            "SMTPD_SPOOL_DIR": str(tmp / "var" / "spool"),
            "SMTPD_MAILDIR": str(tmp / "var" / "maildir"),
            "SMTPD_HOSTNAME": "mx.test.example",
            "SMTPD_NODE_NAME": "test-node",
            "SMTPD_AUTH_FAIL_DELAY": "0.2",
            "SMTPD_AUTH_RATE_PER_IP": "100000",
            "SMTPD_METRICS_LISTEN": "127.0.0.1:0",
            "SMTPD_DRAIN_TIMEOUT": "1",
            "SMTPD_MAX_MESSAGE_SIZE": "200000",
            "CREDENTIAL_ENCRYPTION_KEYS": TEST_FERNET_KEY,
            "DEBUG": "1",  # the self-signed development certificate
            "LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture(scope="module")
def smtpd_factory(django_db_setup, django_db_blocker, tmp_path_factory):
    """Start servers with extra settings; all are stopped at the end of the module."""
    started = []

    def start(args=(), **env) -> SmtpdProcess:
        tmp = tmp_path_factory.mktemp("smtpd")
        with django_db_blocker.unblock():
            server = SmtpdProcess(tmp, server_env(tmp, **env), args).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        logs = server.logs()
        for secret in SECRETS:
            assert secret not in logs, "a test password reached the smtpd log"


@pytest.fixture(scope="module")
def smtpd_server(smtpd_factory):
    return smtpd_factory()


@pytest.fixture(scope="module")
def committed(django_db_setup, django_db_blocker):
    """Database access in autocommit mode: what the test writes, the server sees at once.
    Afterwards the monitoring rows that the module's servers and workers committed (events,
    rollups, blocks, alerts …) are flushed, as transactional tests do, so no later test
    starts with them."""
    with django_db_blocker.unblock():
        yield
        flush_monitoring_tables()


def flush_monitoring_tables():
    from django.apps import apps
    from django.core.management.color import no_style
    from django.db import connection

    tables = [model._meta.db_table for model in apps.get_app_config("monitoring").get_models()]
    with connection.cursor() as cursor:
        for sql in connection.ops.sql_flush(no_style(), tables, allow_cascade=True):
            cursor.execute(sql)


@pytest.fixture(scope="module")
def module_accounts(committed):
    """A domain with two mailboxes (alice has an alias), committed once per module and removed after."""
    from django.conf import settings

    keys = settings.CREDENTIAL_ENCRYPTION_KEYS
    settings.CREDENTIAL_ENCRYPTION_KEYS = [TEST_FERNET_KEY]
    verify.clear_caches()
    domain = Domain.objects.create(name="send.example")
    mailbox, _ = create_mailbox(domain, "alice", password=PASSWORD)
    add_alias(mailbox, "sales")
    other, _ = create_mailbox(domain, "bob", password=OTHER_PASSWORD)
    yield {"domain": domain, "alice": mailbox, "bob": other}
    delete_domain(domain)
    settings.CREDENTIAL_ENCRYPTION_KEYS = keys


def delete_domain(domain):
    from mailadmin.accounts.models import Alias, AppPassword, Mailbox, PasswordHistory

    mailboxes = Mailbox.objects.filter(domain=domain)
    PasswordHistory.objects.filter(mailbox__in=mailboxes).delete()
    AppPassword.objects.filter(mailbox__in=mailboxes).delete()
    Alias.objects.filter(mailbox__in=mailboxes).delete()
    mailboxes.delete()
    domain.delete()


def committed_call(fn, *args, **kwargs):
    """Run ORM work in its own thread and connection, outside the test's transaction,
    so the smtpd process sees it at once (and no row lock of ours blocks the server)."""
    result, error = [], []

    def run():
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as exc:
            error.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


@pytest.fixture
def accounts(module_accounts):
    """The module's accounts, put back to active after each test."""
    from mailadmin.accounts.models import Mailbox

    yield module_accounts
    committed_call(lambda: Mailbox.objects.filter(domain=module_accounts["domain"]).update(state=Mailbox.State.ACTIVE))


ALICE = "alice@send.example"
BOB = "bob@send.example"


@functools.cache
def client_context() -> ssl.SSLContext:
    """One shared client context that trusts the test certificate. Not
    ssl.create_default_context(): loading the system CA store costs 20-160 ms per
    connection on the shared machine and is of no use with verification off."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def smtp_client(server: SmtpdProcess, listener: str, *, ehlo=True) -> smtplib.SMTP:
    """An smtplib client past TLS (STARTTLS or implicit) and EHLO."""
    if listener == "tls":
        client = smtplib.SMTP_SSL("127.0.0.1", server.tls, context=client_context(), timeout=10)
    else:
        client = smtplib.SMTP("127.0.0.1", server.starttls, timeout=10)
        client.starttls(context=client_context())
    if ehlo:
        client.ehlo("client.test")
    return client


class RawClient:
    """Line-level SMTP over a real socket, to check exact replies."""

    def __init__(self, server: SmtpdProcess, listener: str = "starttls", *, tls=True, proxy: bytes = b""):
        sock = socket.create_connection(("127.0.0.1", server.port(listener)), timeout=10)
        if proxy:
            sock.sendall(proxy)
        if listener == "tls":
            sock = client_context().wrap_socket(sock)
        self.sock = sock
        self.buffer = b""
        self.greeting = self.reply()
        if listener == "starttls" and tls:
            self.cmd("EHLO client.test")
            assert self.cmd("STARTTLS").startswith("220")
            self.sock = client_context().wrap_socket(self.sock)
            self.buffer = b""

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by server; pending {self.buffer!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r").decode()

    def reply(self) -> str:
        """The whole (possibly multi-line) reply, lines joined by newlines."""
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self.line())
        return "\n".join(lines)

    def cmd(self, line: str | bytes) -> str:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def closed(self, timeout=5) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self):
        self.sock.close()
