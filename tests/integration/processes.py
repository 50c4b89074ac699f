"""Real processes for the integration tests and bench/dashboard_load.py: a Celery
ingest worker, the web as production runs it (deploy/systemd/mailadmin-web.service:
gunicorn serving mailadmin.wsgi, DEBUG off) with signed-in staff sessions, a steady
auth-event feed into the broker, and staff users polling the overview."""

import http.client
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.smtpd.test_events import free_port  # noqa: F401 - re-exported for the integration tests

ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout=60.0, step=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def start_worker(env, log_path, concurrency=1, loglevel="INFO"):
    """`celery -A mailadmin worker -Q ingest`; returns (process, open log file)."""
    log = open(log_path, "a")  # noqa: SIM115 - kept open for the worker's life
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "mailadmin", "worker", "-Q", "ingest", "-c", str(concurrency)]
        # One message in hand at a time: the next is fetched only after the running one is acked.
        + ["--prefetch-multiplier", "1"]
        + ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", loglevel],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL takes the pool child too
    )
    return proc, log


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


class EventFeed(threading.Thread):
    """Auth events at a steady rate into the broker's `ingest` queue, cut as the smtpd
    cuts them (a batch every 250 ms) and sent by task name like its publisher. Records
    (time, events published so far) to compute the ingest lag."""

    def __init__(self, broker_url: str, rate: int, duration: float, node: str, seed: int = 1):
        super().__init__(daemon=True)
        self.broker_url, self.rate, self.duration, self.node = broker_url, rate, duration, node
        self.rng = random.Random(seed)
        self.interval = 0.25
        self.published = 0
        self.timeline: list[tuple[float, int]] = []  # (monotonic time, published so far)
        self.behind = 0.0  # the longest the feed itself fell behind its schedule (s)
        self.error: BaseException | None = None

    def run(self):
        from mailadmin.celery import app
        from smtpd.events import AUTH_EVENTS_TASK
        from tests.monitoring.factories import traffic

        per_batch = max(1, round(self.rate * self.interval))
        step = timedelta(seconds=self.interval / per_batch)
        try:
            with app.connection_for_write(self.broker_url) as conn:
                started = time.monotonic()
                batches = int(self.duration / self.interval)
                for n in range(batches):
                    due = started + n * self.interval
                    now = time.monotonic()
                    if now < due:
                        time.sleep(due - now)
                    self.behind = max(self.behind, time.monotonic() - due)
                    batch = traffic(per_batch, datetime.now(UTC), self.rng, step=step, node=self.node)
                    app.send_task(AUTH_EVENTS_TASK, args=[batch], queue="ingest", connection=conn)
                    self.published += len(batch)
                    self.timeline.append((time.monotonic(), self.published))
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def published_at(self, count: int) -> float | None:
        """When the count-th event had been published."""
        for at, published in self.timeline:
            if published >= count:
                return at
        return None


class OverviewPollers:
    """Staff users each polling the overview fragment every `interval` seconds, as the
    page's refresh.js does, starting at random offsets; every response is recorded."""

    path = "/monitoring/fragment/"

    def __init__(self, web: WebServer, sessions: list[str], interval: float, duration: float):
        self.web, self.sessions, self.interval, self.duration = web, sessions, interval, duration
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._user, args=(s, i), daemon=True) for i, s in enumerate(sessions)]

    def start(self) -> "OverviewPollers":
        self._started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self._threads:
            thread.join(self.duration + 120)

    def _user(self, session: str, index: int) -> None:
        rng = random.Random(index)
        next_poll = self._started + rng.uniform(0, self.interval)
        while next_poll < self._started + self.duration:
            time.sleep(max(0.0, next_poll - time.monotonic()))
            began = time.monotonic()
            try:
                status, _, body = self.web.get(self.path, session, timeout=60)
                error = None if status == 200 and b"chart-data-json" in body else f"HTTP {status}"
            except OSError as exc:
                error = type(exc).__name__
            with self._lock:
                self.latencies.append(time.monotonic() - began)
                if error:
                    self.errors.append(error)
            next_poll = began + self.interval

    def summary(self) -> dict:
        ms = sorted(x * 1000 for x in self.latencies)
        q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
        return {"polls": len(ms), "errors": len(self.errors), "p50_ms": q[49], "p95_ms": q[94], "max_ms": ms[-1]}
