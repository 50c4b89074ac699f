"""Hold N concurrent SMTP connections, each authenticated (AUTH PLAIN over implicit
TLS), against a real smtpd started here on ephemeral loopback ports.

    createdb -h 127.0.0.1 -U postgres mailadmin_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/mailadmin_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/12 CACHE_URL=redis://127.0.0.1:6379/13 \\
    SECRET_KEY=bench-secret-key-0123456789abcdef0123456789 \\
    .venv/bin/python bench/smtp_load.py --connections 1000 --workers 2

It migrates the database, creates one mailbox, starts `python -m smtpd --workers W`
(AUTH rate limit lifted: every connection comes from 127.0.0.1), opens all
connections at once (bounded concurrency while connecting), holds them open
together for --hold seconds, checks each one still answers NOOP, then QUITs.
Prints a Markdown table for bench/README.md. Exit status 1 on any error.
"""

import argparse
import asyncio
import base64
import os
import resource
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailadmin.settings")
PASSWORD = "Violet-Harbour-Lantern-73-quiet"
ADDRESS = "load@bench.example"


def raise_fd_limit(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, need))
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def prepare_database():
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from mailadmin.accounts.credentials import set_password
    from mailadmin.accounts.mailboxes import create_mailbox
    from mailadmin.accounts.models import Domain, Mailbox

    domain, _ = Domain.objects.get_or_create(name="bench.example")
    mailbox = Mailbox.objects.filter(domain=domain, local_part="load").first()
    if mailbox is None:
        create_mailbox(domain, "load", password=PASSWORD)
    else:
        set_password(mailbox, PASSWORD, enforce_policy=False)


async def reply(reader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed by the server")
        if line[3:4] != b"-":
            return line


async def session(port, context, connect_gate, all_open, hold, results):
    started = time.monotonic()
    try:
        async with connect_gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            assert (await reply(reader)).startswith(b"220")
            writer.write(b"EHLO load.test\r\n")
            assert (await reply(reader)).startswith(b"250")
            auth_started = time.monotonic()
            blob = base64.b64encode(f"\0{ADDRESS}\0{PASSWORD}".encode())
            writer.write(b"AUTH PLAIN " + blob + b"\r\n")
            answer = await reply(reader)
            if not answer.startswith(b"235"):
                raise RuntimeError(f"AUTH answered {answer!r}")
            results["auth_ms"].append((time.monotonic() - auth_started) * 1000)
            results["ready_ms"].append((time.monotonic() - started) * 1000)
        all_open.release()
        await asyncio.sleep(hold)
        writer.write(b"NOOP\r\n")
        if not (await reply(reader)).startswith(b"250"):
            raise RuntimeError("NOOP failed after holding")
        results["held"] += 1
        writer.write(b"QUIT\r\n")
        await reply(reader)
        writer.close()
    except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
        results["errors"].append(f"{type(exc).__name__}: {exc}")
        all_open.release()


async def run_load(port, connections, concurrency, hold):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the development self-signed certificate
    results = {"auth_ms": [], "ready_ms": [], "held": 0, "errors": []}
    gate = asyncio.Semaphore(concurrency)
    opened = asyncio.Semaphore(0)
    started = time.monotonic()
    tasks = [asyncio.create_task(session(port, context, gate, opened, hold, results)) for _ in range(connections)]
    for _ in range(connections):
        await opened.acquire()
    results["all_open_s"] = time.monotonic() - started
    await asyncio.gather(*tasks)
    results["total_s"] = time.monotonic() - started
    return results


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="smtpd worker processes")
    parser.add_argument("--concurrency", type=int, default=200, help="connections being set up at once")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds all connections stay open together")
    options = parser.parse_args()
    limit = raise_fd_limit(options.connections * 2 + 100)
    prepare_database()

    from tests.smtpd.conftest import SmtpdProcess, server_env

    tmp = Path(tempfile.mkdtemp(prefix="smtp-load-"))
    env = server_env(
        tmp,
        SMTPD_AUTH_RATE_PER_IP="1000000",
        SMTPD_AUTH_FAIL_DELAY="0",
        SMTPD_SESSION_TIMEOUT="300",
        SMTPD_THREADS="8",
        LOG_LEVEL="WARNING",
    )
    server = SmtpdProcess(tmp, env, ["--workers", str(options.workers)]).start()
    try:
        results = asyncio.run(run_load(server.tls, options.connections, options.concurrency, options.hold))
    finally:
        code = server.stop()
    errors = results["errors"]
    print(
        f"| connections | smtpd workers | all authenticated and open after | held {options.hold:.0f} s | "
        "AUTH p50 / p95 / p99 | errors |"
    )
    print("|---:|---:|---:|---:|---|---:|")
    auth = results["auth_ms"]
    print(
        f"| {options.connections} | {options.workers} | {results['all_open_s']:.1f} s | {results['held']} | "
        f"{statistics.median(auth) if auth else float('nan'):.0f} / {percentile(auth, 95):.0f} / "
        f"{percentile(auth, 99):.0f} ms | {len(errors)} |"
    )
    print(f"(client fd limit {limit}; server exit status {code}; connect concurrency {options.concurrency})")
    for error in sorted(set(errors))[:10]:
        print("  error:", error)
    return 1 if errors or results["held"] != options.connections else 0


if __name__ == "__main__":
    sys.exit(main())
