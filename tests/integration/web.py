"""The web as production runs it (deploy/systemd/mailadmin-web.service: gunicorn
serving mailadmin.wsgi, DEBUG off) on an ephemeral loopback port, and signed-in
staff sessions for it. Used by the integration tests and bench/dashboard_load.py."""

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebServer:
    """`gunicorn mailadmin.wsgi:application` with the given environment; access log to a file."""

    def __init__(self, tmp: Path, env: dict, workers: int = 2, threads: int = 1):
        self.log_path = Path(tmp) / "web.log"
        self.env = {**env, "DEBUG": "0", "ALLOWED_HOSTS": "127.0.0.1"}
        self.workers, self.threads = workers, threads
        self.port = free_port()
        self.proc = None

    def start(self, timeout: float = 60) -> "WebServer":
        self._log = open(self.log_path, "a")  # noqa: SIM115 (open for the life of the process)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "mailadmin.wsgi:application", "--bind", f"127.0.0.1:{self.port}"]
            + ["--workers", str(self.workers), "--threads", str(self.threads), "--timeout", "60"]
            + ["--access-logfile", "-", "--error-logfile", "-"],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if self.get("/static/does-not-exist")[0] == 404:
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn did not start:\n{self.logs()[-3000:]}")

    def get(self, path: str, session: str | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            headers = {"Cookie": f"sessionid={session}"} if session else {}
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def staff_session(email: str, **kwargs) -> str:
    """A committed session of a staff user past MFA (a TOTP authenticator): the value of
    the `sessionid` cookie. Call with database access outside any test transaction."""
    from django.conf import settings
    from django.test import Client

    from mailadmin.staff.accounts import create_staff
    from mailadmin.staff.models import Role
    from tests.conftest import add_totp

    user, _ = create_staff(email, role=kwargs.pop("role", Role.SUPERADMIN), **kwargs)
    add_totp(user)
    client = Client()
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client.cookies[settings.SESSION_COOKIE_NAME].value
