"""SMTP AUTH throughput and latency: this smtpd against a bare aiosmtpd 1.4.6 ceiling.

    .venv/bin/python bench/smtp_auth.py [--duration 10] [--users 1000] [--quick]

One invocation does everything on loopback:

1. prepares its own PostgreSQL database (DATABASE_URL's server, database
   `mailadmin_bench` by default), migrated with `manage.py migrate`, holding
   1,000 mailboxes userNNNN@bench.example (created once, reused afterwards);
2. starts `python -m smtpd --workers 2` (STARTTLS listener on an ephemeral
   port, SMTPD_AUTH_FAIL_DELAY left at its default) and a real Celery worker
   consuming the ingest queue, both on Redis DB 15;
3. starts a bare aiosmtpd 1.4.6 server (STARTTLS, AUTH PLAIN checked against a
   Python dict, the same certificate, also 2 processes) as the framework's ceiling;
4. measures, per server, connect + EHLO + STARTTLS + EHLO + AUTH PLAIN + QUIT:
   (a) repeated credentials at concurrency 1, 8, 64 (warm-up discarded),
   (b) 1,000 distinct users each logging in once at concurrency 1, 8, 64
       (the smtpd is restarted before each so no cache helps), with peak RSS,
   (c) half of the connections failing AUTH at concurrency 64: the successful
       AUTHs' latency;
5. the smtpd's memory with 1,000 idle TLS connections open: PSS of parent +
   workers (what it occupies) and RSS, 2 s and 25 s after they opened;
6. counts the AUTH attempts made against the smtpd and the AuthEvent rows the
   worker ingested (after the pipeline drained);
7. prints a table and the smtpd/bare ratio at concurrency 64.

The client is this process (asyncio streams + ssl, one event loop). The
machine's cores are shared by the client, the servers and the Celery worker,
so absolute rates are those of the whole box; the CPU each server spends per
connection (from /proc) is printed too, since it does not depend on the client.
The per-IP AUTH rate limit is raised for the smtpd: every connection comes from
127.0.0.1. Results: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import resource
import select
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "bench.example"
HOST = "127.0.0.1"
BENCH_SECRET_KEY = "bench-secret-key-not-for-production-0123456789abcdef"
BENCH_FERNET_KEY = "m1T2YhQ0Zb0pJm3bW5Vq9yN6cXr8sLkA4dFgHjKlQwE="
CLK_TCK = os.sysconf("SC_CLK_TCK")


def username(i: int) -> str:
    return f"user{i:04d}@{DOMAIN}"


def password(i: int) -> str:
    return f"bench-{i:04d}-Violet-anchor-Harbour"


WRONG_PASSWORD = "not-the-Right-password-000"


# --- environment, database, processes ------------------------------------------------


def bench_env(args, var: Path, cert: Path | None = None, key: Path | None = None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTPD_", "CELERY_", "VERIFY_", "SMTP_ARGON2"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "mailadmin.settings",
            "DATABASE_URL": args.database_url,
            "CELERY_BROKER_URL": args.redis_url,
            "CACHE_URL": args.redis_url,
            "SECRET_KEY": BENCH_SECRET_KEY,
            "CREDENTIAL_ENCRYPTION_KEYS": BENCH_FERNET_KEY,
            "DEBUG": "0",
            "VAR_DIR": str(var),
            "SMTPD_SPOOL_DIR": str(var / "spool"),
            "SMTPD_MAILDIR": str(var / "maildir"),
            "SMTPD_HOSTNAME": "bench.localhost",
            "SMTPD_METRICS_LISTEN": "",
            # Every benchmark connection comes from 127.0.0.1: the per-IP limit would cut it off.
            "SMTPD_AUTH_RATE_PER_IP": "1000000000",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "VERIFY_CACHE_LISTEN": "0" if getattr(args, "no_listen", False) else "1",
        }
    )
    if cert and key:
        env.update({"SMTPD_TLS_CERT": str(cert), "SMTPD_TLS_KEY": str(key)})
    env.update(extra)
    return env


def prepare_database(database_url: str, env: dict) -> None:
    """Create the database if missing, then migrate it (also used by bench/latency.py)."""
    import psycopg

    url = urlsplit(database_url)
    name = url.path.lstrip("/")
    admin = urlunsplit(("postgresql", url.netloc, "/postgres", "", ""))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def prepare_mailboxes(count: int) -> float:
    """userNNNN@bench.example with password(NNNN); returns seconds spent creating."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    from mailadmin.accounts.credentials import set_password
    from mailadmin.accounts.models import Domain, Mailbox
    from mailadmin.monitoring.models import AllowedNetwork, AuthEvent, Block

    # Every benchmark client is 127.0.0.1: without this the detectors rightly
    # block it as a password spray during the half-failing cell, and later cells
    # measure 454 "blocked" replies instead of logins.
    AllowedNetwork.objects.get_or_create(cidr="127.0.0.0/8", defaults={"note": "benchmark clients"})
    Block.objects.filter(value="127.0.0.1").delete()

    domain, _ = Domain.objects.get_or_create(name=DOMAIN)
    Mailbox.objects.filter(domain=domain).update(state=Mailbox.State.ACTIVE)
    existing = set(Mailbox.objects.filter(domain=domain).values_list("local_part", flat=True))
    missing = [i for i in range(count) if f"user{i:04d}" not in existing]

    def create(i):
        try:
            set_password(Mailbox(domain=domain, local_part=f"user{i:04d}"), password(i), enforce_policy=False)
        finally:
            connections.close_all()

    started = time.monotonic()
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(create, missing))
    AuthEvent.objects.all().delete()  # the bench database's events are this run's only
    return time.monotonic() - started


def wait_ready(proc: subprocess.Popen, marker: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if marker in line:
                return line
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{marker!r} did not come up")


def stop(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Smtpd:
    def __init__(self, env: dict, log_path: Path, workers: int = 2, command: list[str] | None = None):
        self.env, self.log_path, self.workers = env, log_path, workers
        self.command = command or [sys.executable, "-m", "smtpd"]  # bench/smtp_memory.py wraps it
        self.proc = None
        self.port = None

    def start(self, node: str) -> Smtpd:
        env = dict(self.env, SMTPD_NODE_NAME=node)
        cmd = [*self.command, "--workers", str(self.workers), "--listen", f"{HOST}:0", "--tls-listen", "-"]
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        line = wait_ready(self.proc, "smtpd ready")
        self.port = int(line.split("starttls=")[1].split()[0].rsplit(":", 1)[1])
        return self

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self):
        stop(self.proc)


class BareServer:
    def __init__(self, env: dict, cert: Path, key: Path, users: int):
        self.env, self.cert, self.key, self.users = env, cert, key, users
        self.proc = None

    def start(self) -> BareServer:
        cmd = [sys.executable, __file__, "--bare-server", str(self.cert), str(self.key), "--users", str(self.users)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, text=True)
        line = wait_ready(self.proc, "bare ready")
        self.port = int(line.split("port=")[1].split()[0])
        return self

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def worker_pids(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self):
        stop(self.proc)


def start_private_redis() -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return proc, f"redis://{HOST}:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def start_celery_worker(env: dict, log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "celery", "-A", "mailadmin", "worker", "-Q", "ingest", "-c", "2"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"]
    with open(log_path, "a") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


# --- /proc ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared library pages counted once across the workers."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


# --- the client -------------------------------------------------------------------------


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed by server")
        if line[3:4] != b"-":
            return line


async def open_tls_session(port: int, context: ssl.SSLContext):
    """Connected, greeted, EHLO, STARTTLS, EHLO again: ready for AUTH."""
    reader, writer = await asyncio.open_connection(HOST, port)
    await read_reply(reader)
    writer.write(b"EHLO bench.client\r\n")
    await read_reply(reader)
    writer.write(b"STARTTLS\r\n")
    if not (await read_reply(reader)).startswith(b"220"):
        raise ConnectionError("STARTTLS refused")
    await writer.start_tls(context, server_hostname="localhost")
    writer.write(b"EHLO bench.client\r\n")
    await read_reply(reader)
    return reader, writer


@dataclass
class Counts:
    attempts: int = 0  # AUTH commands written (each one must become one event)
    ok: list = field(default_factory=list)  # AUTH latencies (s) of successes
    failed: list = field(default_factory=list)  # AUTH latencies (s) of expected failures
    unexpected: int = 0  # a reply other than the one expected
    errors: int = 0  # connection errors


async def one_login(port, context, user, secret, expect_ok, counts: Counts) -> None:
    writer = None
    try:
        reader, writer = await open_tls_session(port, context)
        blob = base64.b64encode(f"\0{user}\0{secret}".encode())
        started = time.perf_counter()
        writer.write(b"AUTH PLAIN " + blob + b"\r\n")
        counts.attempts += 1
        reply = await read_reply(reader)
        latency = time.perf_counter() - started
        if reply.startswith(b"235" if expect_ok else b"535"):
            (counts.ok if expect_ok else counts.failed).append(latency)
        else:
            counts.unexpected += 1
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        counts.errors += 1
    finally:
        if writer is not None:
            writer.close()
            with suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


async def run_cell(port, concurrency, plan, *, duration=None, sample_pids=None) -> dict:
    """`concurrency` loops of one login after another. plan(loop_index) gives
    (user, secret, expect_ok) or None when there is nothing left to do."""
    context = client_context()
    counts = Counts()
    peak = {"rss": 0}
    sampler = asyncio.create_task(_sample_rss(sample_pids, peak)) if sample_pids else None
    cpu_before = cpu_seconds(sample_pids() if sample_pids else [])
    started = time.monotonic()
    deadline = started + duration if duration else float("inf")
    await _loops(port, context, concurrency, plan, deadline, counts)
    elapsed = time.monotonic() - started
    if sampler:
        sampler.cancel()
    pids = sample_pids() if sample_pids else []
    cpu = cpu_seconds(pids) - cpu_before
    done = len(counts.ok) + len(counts.failed)
    return {
        "concurrency": concurrency,
        "elapsed": elapsed,
        "connections": done,
        "rate": done / elapsed if elapsed else 0.0,
        "ok": percentiles(counts.ok),
        "failed": percentiles(counts.failed),
        "ok_count": len(counts.ok),
        "failed_count": len(counts.failed),
        "attempts": counts.attempts,
        "unexpected": counts.unexpected,
        "errors": counts.errors,
        "server_cpu_ms_per_conn": 1000 * cpu / done if done else None,
        "peak_rss_mib": peak["rss"] / 1024 if sample_pids else None,
        "hwm_mib": sum(rss_kib(p, "VmHWM") for p in pids) / 1024 if pids else None,
    }


async def _loops(port, context, concurrency, plan, deadline, counts):
    async def loop(index):
        while time.monotonic() < deadline:
            job = plan(index)
            if job is None:
                return
            await one_login(port, context, *job, counts)

    await asyncio.gather(*(loop(i) for i in range(concurrency)))


async def _sample_rss(pids_fn, peak):
    while True:
        peak["rss"] = max(peak["rss"], sum(rss_kib(p) for p in pids_fn()))
        await asyncio.sleep(0.2)


def percentiles(samples: list[float]) -> dict | None:
    if not samples:
        return None
    ms = sorted(s * 1000 for s in samples)
    if len(ms) == 1:
        return {"p50": ms[0], "p95": ms[0], "p99": ms[0]}
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": q[49], "p95": q[94], "p99": q[98]}


def repeated_plan(index):
    return username(0), password(0), True


def distinct_plan(users: int):
    """Each of the users once, in order, shared by all loops."""
    ids = iter(range(users))
    return lambda index: (lambda i: None if i is None else (username(i), password(i), True))(next(ids, None))


def half_failing_plan(concurrency: int, users: int):
    """Loops 0..c/2-1 log in with the right (cached) password; the others use a
    wrong password for varying users (each failure costs an Argon2 check and the delay)."""
    wrong = itertools.cycle(range(1, users))

    def plan(index):
        if index < concurrency // 2:
            return username(0), password(0), True
        return username(next(wrong)), WRONG_PASSWORD, False

    return plan


IDLE_SETTLE = 25  # seconds: the smtpd releases memory once a burst of new sessions has ended


def memory_mib(server) -> dict:
    """Workers' RSS, the parent's RSS, and the PSS of parent + workers (what the
    server occupies: a page shared by k processes counts 1/k in each)."""
    workers = server.worker_pids()
    return {
        "workers_rss": sum(rss_kib(p) for p in workers) / 1024,
        "parent_rss": rss_kib(server.proc.pid) / 1024,
        "pss": sum(pss_kib(p) for p in [server.proc.pid, *workers]) / 1024,
    }


async def idle_connections(port, count, server) -> dict:
    """Memory of the server (parent included) before and with `count` idle TLS sessions
    open: 2 s after they opened, and IDLE_SETTLE s later."""
    context = client_context()
    before = memory_mib(server)
    sessions, errors = [], 0
    semaphore = asyncio.Semaphore(32)

    async def open_one():
        nonlocal errors
        async with semaphore:
            try:
                sessions.append(await open_tls_session(port, context))
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                errors += 1

    await asyncio.gather(*(open_one() for _ in range(count)))
    await asyncio.sleep(2)
    during = memory_mib(server)
    await asyncio.sleep(IDLE_SETTLE)
    settled = memory_mib(server)
    for _, writer in sessions:
        writer.close()
    await asyncio.sleep(1)
    return {
        "open": len(sessions),
        "errors": errors,
        "before": before,
        "during": during,
        "settled": settled,
        # kept for older result readers
        "rss_before_mib": before["workers_rss"],
        "rss_mib": settled["workers_rss"],
        "pss_mib": settled["pss"],
        # 2 s after opening: later, the smtpd may have released what the earlier cells left
        "per_connection_kib": (during["pss"] - before["pss"]) * 1024 / max(len(sessions), 1),
    }


# --- the bare aiosmtpd server (run as a subprocess of this script) ---------------------


def bare_server_main(cert: str, key: str, users: int, workers: int = 2) -> None:
    import logging
    import warnings

    warnings.simplefilter("ignore")  # aiosmtpd 1.4.6 warns about its own Session.login_data
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

    # ERROR: aiosmtpd 1.4.6 logs a WARNING ("Session.login_data is deprecated") on every success.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    accounts = {username(i).encode(): password(i).encode() for i in range(users)}

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and accounts.get(auth_data.login) == auth_data.password
        return AuthResult(success=ok, handled=False)

    class Handler:
        pass

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(1024)
    sock.setblocking(False)

    async def serve():
        loop = asyncio.get_running_loop()
        await loop.create_server(
            lambda: SMTP(
                Handler(),
                hostname="bench.localhost",
                tls_context=context,
                require_starttls=True,
                auth_require_tls=True,
                authenticator=authenticator,
                auth_exclude_mechanism=["LOGIN"],
            ),
            sock=sock,
        )
        await asyncio.Event().wait()

    pids = []
    for _ in range(workers):  # the same shape as smtpd --workers 2: one process per core
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
            asyncio.run(serve())
            os._exit(0)
        pids.append(pid)
    print(f"bare ready port={sock.getsockname()[1]} pids={','.join(map(str, pids))}", flush=True)

    def forward(signum, frame):
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    for pid in pids:
        os.waitpid(pid, 0)


# --- the run ----------------------------------------------------------------------------


def count_events(nodes) -> int:
    from mailadmin.monitoring.models import AuthEvent

    return AuthEvent.objects.filter(node__in=list(nodes)).count()


def wait_for_events(expected: int, nodes, spool: Path, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    last, last_change = -1, started
    while time.monotonic() - started < timeout:
        count = count_events(nodes)
        if count >= expected and not any(spool.rglob("*.json")):
            break
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 30:
            break
        time.sleep(0.5)
    return count_events(nodes), time.monotonic() - started


def fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'server':<7} {'scenario':<22} {'c':>3} {'conns':>6} {'conn/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'fail':>5} {'err':>4} {'cpu ms/conn':>11} {'peak RSS MiB':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = r["ok"] or {}
        print(
            f"{r['server']:<7} {r['scenario']:<22} {r['concurrency']:>3} {r['connections']:>6} {r['rate']:>7.1f} "
            f"{fmt(ok.get('p50')):>7} {fmt(ok.get('p95')):>7} {fmt(ok.get('p99')):>7} "
            f"{r['failed_count']:>5} {r['errors'] + r['unexpected']:>4} {fmt(r['server_cpu_ms_per_conn']):>11} "
            f"{fmt(r['peak_rss_mib']):>12}"
        )


async def benchmark(args, smtpd: Smtpd, bare: BareServer, spool: Path) -> dict:
    from django.conf import settings

    rows, levels = [], args.concurrency
    attempts_by_node: dict[str, int] = {}

    def add(server, scenario, result, node=None):
        result.update(server=server, scenario=scenario)
        rows.append(result)
        if node:
            attempts_by_node[node] = attempts_by_node.get(node, 0) + result["attempts"] + result.get("warm", 0)
        print(f"  {server} {scenario} c={result['concurrency']}: {result['rate']:.1f} conn/s", flush=True)

    # (a) repeated credentials, and (c) half failing, on one smtpd run.
    node = "bench-smtpd"
    smtpd.start(node)
    for c in levels:
        # warm-up (the first login of each worker pays Argon2): not measured, counted for the event check
        rows_warm = await run_cell(smtpd.port, c, repeated_plan, duration=args.warmup)
        r = await run_cell(smtpd.port, c, repeated_plan, duration=args.duration, sample_pids=smtpd.pids)
        r["warm"] = rows_warm["attempts"]
        add("smtpd", "repeated", r, node)
    hf_rows = {}
    for c in [levels[-1]]:
        r = await run_cell(
            smtpd.port, c, half_failing_plan(c, args.users), duration=args.duration, sample_pids=smtpd.pids
        )
        add("smtpd", "half failing (ok AUTHs)", r, node)
        hf_rows[c] = r
    # (5) idle connections, on the same (warm) server
    idle = await idle_connections(smtpd.port, args.idle, smtpd)
    print(f"  smtpd idle: {idle}", flush=True)
    smtpd.stop()

    # (b) distinct users: a fresh smtpd per level, so no cache helps.
    for c in levels:
        node_c = f"bench-distinct-{c}"
        smtpd.start(node_c)
        r = await run_cell(smtpd.port, c, distinct_plan(args.users), sample_pids=smtpd.pids)
        add("smtpd", f"{args.users} distinct users", r, node_c)
        smtpd.stop()

    # the bare aiosmtpd ceiling
    bare.start()
    for c in levels:
        await run_cell(bare.port, c, repeated_plan, duration=args.warmup)
        add(
            "bare",
            "repeated",
            await run_cell(bare.port, c, repeated_plan, duration=args.duration, sample_pids=bare.pids),
        )
    for c in levels:
        add(
            "bare",
            f"{args.users} distinct users",
            await run_cell(bare.port, c, distinct_plan(args.users), sample_pids=bare.pids),
        )
    c = levels[-1]
    add(
        "bare",
        "half failing (ok AUTHs)",
        await run_cell(bare.port, c, half_failing_plan(c, args.users), duration=args.duration, sample_pids=bare.pids),
    )
    bare_idle = await idle_connections(bare.port, args.idle, bare)
    print(f"  bare idle: {bare_idle}", flush=True)
    bare.stop()

    return {
        "rows": rows,
        "idle": idle,
        "bare_idle": bare_idle,
        "attempts_by_node": attempts_by_node,
        "argon2": {
            "time_cost": settings.SMTP_ARGON2_TIME_COST,
            "memory_kib": settings.SMTP_ARGON2_MEMORY_COST,
            "parallelism": settings.SMTP_ARGON2_PARALLELISM,
            "verify_concurrency": settings.VERIFY_CONCURRENCY,
            "smtpd_threads": settings.SMTPD_THREADS,
            "auth_fail_delay": settings.SMTPD_AUTH_FAIL_DELAY,
        },
    }


def report(results: dict, levels) -> None:
    rows = results["rows"]
    print()
    print_table(rows)
    top = levels[-1]

    def row(server, scenario, c):
        return next(
            (r for r in rows if r["server"] == server and r["scenario"] == scenario and r["concurrency"] == c), None
        )

    s, b = row("smtpd", "repeated", top), row("bare", "repeated", top)
    a = results["argon2"]
    print()
    print(
        f"Argon2id: m={a['memory_kib']} KiB t={a['time_cost']} p={a['parallelism']}; VERIFY_CONCURRENCY="
        f"{a['verify_concurrency']}, SMTPD_THREADS={a['smtpd_threads']}, SMTPD_AUTH_FAIL_DELAY={a['auth_fail_delay']} s"
    )
    if s and b:
        ratio = s["rate"] / b["rate"] if b["rate"] else 0
        verdict = "met" if ratio >= 0.8 else "MISSED"
        print(
            f"repeated credentials, c={top}: smtpd {s['rate']:.1f} / bare {b['rate']:.1f} conn/s "
            f"= {ratio:.2f}x (target >= 0.8x: {verdict})"
        )
        if s["server_cpu_ms_per_conn"] and b["server_cpu_ms_per_conn"]:
            print(
                f"  server CPU per connection: smtpd {s['server_cpu_ms_per_conn']:.2f} ms, "
                f"bare {b['server_cpu_ms_per_conn']:.2f} ms "
                f"({b['server_cpu_ms_per_conn'] / s['server_cpu_ms_per_conn']:.2f}x)"
            )
    hf = row("smtpd", "half failing (ok AUTHs)", top)
    if hf and hf["ok"]:
        verdict = "met" if hf["ok"]["p95"] <= 100 else "MISSED"
        print(
            f"half failing, c={top}: successful AUTH p95 {hf['ok']['p95']:.1f} ms over {hf['ok_count']} successes "
            f"({hf['failed_count']} failures, failure p50 {hf['failed']['p50']:.0f} ms) (target <= 100 ms: {verdict})"
        )
    idle, bare_idle = results["idle"], results["bare_idle"]
    b, d, t = idle["before"], idle["during"], idle["settled"]
    verdict = "met" if t["pss"] * 1.048576 <= 150 else "MISSED"
    print(
        f"idle: {idle['open']} TLS sessions open ({idle['errors']} errors), smtpd --workers 2, MiB before -> "
        f"after 2 s -> after {IDLE_SETTLE} s: PSS parent + workers {b['pss']:.1f} -> {d['pss']:.1f} -> {t['pss']:.1f} "
        f"({t['pss'] * 1.048576:.0f} MB; {idle['per_connection_kib']:.1f} KiB/connection after 2 s) "
        f"(target <= 150 MB: {verdict}); "
        f"RSS workers {b['workers_rss']:.1f} -> {d['workers_rss']:.1f} -> {t['workers_rss']:.1f} + parent "
        f"{t['parent_rss']:.1f}; bare PSS {bare_idle['before']['pss']:.1f} -> {bare_idle['settled']['pss']:.1f}, "
        f"RSS workers {bare_idle['settled']['workers_rss']:.1f} + parent {bare_idle['settled']['parent_rss']:.1f}"
    )
    for r in rows:
        if r["server"] == "smtpd" and "distinct" in r["scenario"]:
            print(
                f"distinct users, c={r['concurrency']}: {r['rate']:.1f} logins/s, peak RSS (parent + workers) "
                f"{r['peak_rss_mib']:.1f} MiB sampled, sum of VmHWM {r['hwm_mib']:.1f} MiB"
            )
    e = results["events"]
    lost = e["attempts"] - e["ingested"]
    print(
        f"events: {e['attempts']} AUTH attempts made against the smtpd, {e['ingested']} AuthEvent rows ingested "
        f"({lost} lost) after {e['drain_wait_s']:.1f} s of draining"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/mailadmin_bench")
    p.add_argument(
        "--redis-url",
        default="private",
        help="broker and cache; 'private' (default): a redis-server of our own on an ephemeral port",
    )
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured cell")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8, 64])
    p.add_argument("--drain-timeout", type=float, default=180.0)
    p.add_argument("--quick", action="store_true", help="short cells, 200 users: to check the script works")
    p.add_argument(
        "--no-listen",
        action="store_true",
        help="VERIFY_CACHE_LISTEN=0: every AUTH reads the database (the path before the notified cache)",
    )
    p.add_argument("--bare-server", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server:
        bare_server_main(*args.bare_server, args.users)
        return 0
    if args.quick:
        args.duration, args.warmup, args.users, args.idle = 3.0, 1.0, 200, 300

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # children inherit it

    var = ROOT / "var" / "bench"
    spool = var / "spool"
    if spool.exists():
        for path in spool.rglob("*"):
            if path.is_file():
                path.unlink()
    private_redis = None
    if args.redis_url == "private":
        # A shared Redis DB can be flushed by someone's test run, taking queued events with it.
        private_redis, args.redis_url = start_private_redis()
    env = bench_env(args, var)
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    print("preparing the database ...", flush=True)
    prepare_database(args.database_url, env)
    import django

    django.setup()
    from smtpd.server import development_certificate

    created = prepare_mailboxes(args.users)
    print(f"  {args.users} mailboxes ready ({created:.0f} s spent creating)", flush=True)
    cert, key = development_certificate(var / "tls", "bench.localhost")
    env = bench_env(args, var, cert, key)

    import redis

    redis.Redis.from_url(args.redis_url).delete("ingest")  # nothing left over from an earlier run
    worker = start_celery_worker(env, var / "celery.log")
    smtpd = Smtpd(env, var / "smtpd.log")
    bare = BareServer(env, cert, key, args.users)
    try:
        results = asyncio.run(benchmark(args, smtpd, bare, spool))
        # (6) every AUTH attempt made against the smtpd must arrive as one AuthEvent row
        expected = sum(results["attempts_by_node"].values())
        ingested, waited = wait_for_events(expected, results["attempts_by_node"], spool, args.drain_timeout)
        results["events"] = {"attempts": expected, "ingested": ingested, "drain_wait_s": waited}
    finally:
        smtpd.stop()
        bare.stop()
        stop(worker)
        stop(private_redis)
    results["date"] = time.strftime("%Y-%m-%d %H:%M")
    results["cores"] = os.cpu_count()
    results["loadavg_after"] = os.getloadavg()
    (var / "smtp_auth-results.json").write_text(json.dumps(results, indent=1, default=str))
    report(results, args.concurrency)
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f}; JSON: {var / 'smtp_auth-results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
