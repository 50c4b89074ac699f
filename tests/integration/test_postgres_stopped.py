"""PostgreSQL stopped for 10 s, then started again; nothing else restarted. During
the outage the smtpd answers AUTH with `454 4.7.0`, the web (gunicorn, DEBUG off)
answers with its 503 maintenance page, and the Celery ingest worker retries the
batch that arrived meanwhile. Afterwards AUTH succeeds on the same connection, the
same staff session sees the dashboard, and every event is in the database once.

The suite's PostgreSQL is shared (other test runs use it), so it is never stopped:
this test copies its test database (`pg_dump`) into a private PostgreSQL cluster
(`initdb` into a temporary directory, its own loopback port) and stops that one
with `pg_ctl stop -m fast`, as a maintenance restart would. Real processes,
loopback only; about 45 s, most of it the outage and Celery's retry back-off.
"""

import base64
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests.integration.processes import WebServer, free_port, staff_session, start_worker, wait_for
from tests.integration.test_faults import redis_server  # noqa: F401 (fixture)
from tests.smtpd.conftest import (  # noqa: F401 (fixtures)
    ALICE,
    PASSWORD,
    WRONG_PASSWORD,
    RawClient,
    committed,
    module_accounts,
    server_database_url,
    server_env,
    smtpd_factory,
)

pytestmark = pytest.mark.integration
OUTAGE = 10.0
NODE = "pg-stop-node"


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on an ephemeral loopback port. PostgreSQL refuses
    to run as root, so under root it runs as the `postgres` system user."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="mailadmin-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.running = False
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/mailadmin"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)

    def init(self) -> "PrivatePostgres":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", options, "-w", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def copy_database(self, source_url: str) -> None:
        """The whole test database (schema and committed rows) into database `mailadmin`."""
        admin = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE mailadmin")
        dump = subprocess.run(
            [str(self.bindir / "pg_dump"), "--no-owner", "--no-privileges", source_url],
            check=True,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            [str(self.bindir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", self.url],
            input=dump.stdout,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def destroy(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres():
    bindir = postgres_bindir()
    if bindir is None or (os.geteuid() == 0 and not shutil.which("runuser")):
        pytest.skip("needs PostgreSQL's server binaries (initdb, pg_ctl)")
    server = PrivatePostgres(bindir).init()
    server.start()
    yield server
    server.destroy()


def plain(user=ALICE, password=PASSWORD) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def node_events(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM monitoring_authevent WHERE node = %s", [NODE]
        ).fetchone()


def unreachable(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


def test_postgresql_stopped_for_10_s_smtpd_web_and_worker_ride_it_out(
    transactional_db,
    smtpd_factory,  # noqa: F811
    module_accounts,  # noqa: F811
    redis_server,  # noqa: F811
    private_postgres,
    tmp_path,
):
    session = staff_session("outage-web@staff.example")  # committed: transactional_db
    private_postgres.copy_database(server_database_url())
    url = private_postgres.url
    smtpd = smtpd_factory(
        DATABASE_URL=url, CELERY_BROKER_URL=redis_server.url, SMTPD_NODE_NAME=NODE, SMTPD_AUTH_FAIL_DELAY="0"
    )
    env = server_env(tmp_path, DATABASE_URL=url, CELERY_BROKER_URL=redis_server.url, LOG_LEVEL="INFO")
    web = WebServer(tmp_path, env, workers=1).start()
    worker, log = start_worker(env, tmp_path / "worker.log")
    attempts = 0
    try:
        # Before: everything works.
        client = RawClient(smtpd, "tls")
        client.cmd("EHLO outage.test")
        assert client.cmd(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"
        attempts += 1
        assert web.get("/monitoring/", session)[0] == 200
        assert wait_for(lambda: node_events(url)[0] == attempts, timeout=30)

        private_postgres.stop()
        stopped = time.monotonic()
        # smtpd: a temporary failure, whatever the password (it cannot check either).
        client = RawClient(smtpd, "tls")
        client.cmd("EHLO outage.test")
        for password in (PASSWORD, WRONG_PASSWORD, PASSWORD):
            assert client.cmd(f"AUTH PLAIN {plain(password=password)}") == "454 4.7.0 Temporary authentication failure"
            attempts += 1
        # web: the maintenance page, for pages and for the polled fragment alike.
        for path in ("/", "/monitoring/", "/monitoring/fragment/", "/accounts/login/"):
            status, headers, body = web.get(path, session)
            assert status == 503, (path, status)
            assert headers["Retry-After"] == "30"
            assert b"The database is unavailable" in body and b"Traceback" not in body
        # worker: the batch with the three events above arrived and is being retried.
        assert wait_for(lambda: "retry: Retry in" in (tmp_path / "worker.log").read_text(), timeout=OUTAGE - 1)
        assert unreachable(url)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
        private_postgres.start()

        # After, with no restart of anything: the same SMTP session authenticates...
        assert client.cmd(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"
        attempts += 1
        # ...the same staff session sees the dashboard...
        status, _, body = web.get("/monitoring/", session)
        assert status == 200 and b"The database is unavailable" not in body
        assert web.get("/monitoring/fragment/", session)[0] == 200
        # ...and the retried batch is ingested, each event once (Celery's back-off: < 35 s).
        assert wait_for(lambda: node_events(url) == (attempts, attempts), timeout=60), node_events(url)
        time.sleep(1.0)
        assert node_events(url) == (attempts, attempts)
        assert worker.poll() is None and smtpd.proc.poll() is None and web.proc.poll() is None
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
        web.stop()
    # Each side says what happened, in words an operator can act on.
    assert "failed: database error OperationalError" in smtpd.logs()
    assert "Traceback" not in smtpd.logs()  # one clear line per attempt during an outage, not a traceback
    assert "database unavailable, answering 503: OperationalError" in web.logs()
    assert '" 500 ' not in web.logs()
