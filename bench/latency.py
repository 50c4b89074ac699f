"""Detection latency through the real pipeline: failed AUTH -> block enforced, and
successful login after the attack -> critical alert email accepted by an SMTP listener.

    .venv/bin/python bench/latency.py [--runs 20] [--database-url postgres://...]

Processes, all on loopback: `python -m smtpd` (one worker), a Celery worker consuming
`ingest` and `alerts` (-c 2, the settings' prefetch), a throwaway redis-server (broker
and cache: the block version stamp), PostgreSQL (its own database, migrated and
emptied of monitoring data first), and an aiosmtpd listener taking the alert emails.
The harness is tests/integration/pipeline.py (the end-to-end test's).

Each run uses its own mailbox and three fresh source addresses in three /24s of
127.0.0.0/8 (Linux routes all of it to lo; the client binds its socket to them):

1. attacker A: 9 failed AUTH PLAIN (3 per connection: the smtpd's limit), then the
   10th — the one that crosses IP brute force (>= 10 failures / 10 min). From just
   before that 10th AUTH is sent (t0) the client retries AUTH from A every 50 ms on
   new connections; "block" = t0 -> the first 454 4.7.0. "high mail" = t0 -> the IP
   brute-force alert email accepted by the listener.
2. helper B (another /24): 6 more passwords at the same mailbox, so account brute force
   (>= 10 distinct password fingerprints / 1 h) opens an alert for the user.
3. intruder C (a third /24): the right password (t1). "critical mail" = t1 -> the
   success-after-attack (critical) email accepted; "critical block" = t1 -> C refused.

SMTPD_AUTH_FAIL_DELAY is 0 (default 1 s) and SMTPD_MAX_AUTH_FAILURES 1000 (default 3)
so that the block probe is one AUTH every ~20 ms on one open connection (a resolution
of a few tens of ms); the attack itself still uses 3 attempts per connection, and the
detection path depends on neither setting. The alert-mail throttle is
lifted (MONITORING_ALERT_MAILS_PER_HOUR) because one recipient gets 3 mails per run.
Results: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smtp_auth import BENCH_FERNET_KEY, BENCH_SECRET_KEY, prepare_database  # noqa: E402

DOMAIN = "latency.example"
PASSWORD = "Copper-bench-Harbour-62-quiet"
GUESSES = [f"Guess-{i:02d}-violet-Anchor-drift" for i in range(16)]
ROOT_ADMIN = "root@staff.example"
DOMAIN_ADMIN = f"admin@{DOMAIN}"
TIMEOUT = 30.0


def source(run: int, role: int) -> str:
    """Distinct /24 per run and role: 127.(10 + 50*role + run // 200).(run % 200).1"""
    return f"127.{10 + 50 * role + run // 200}.{run % 200}.1"


def user(run: int) -> str:
    return f"lat{run:04d}@{DOMAIN}"


def base_env(database_url: str, var: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTPD_", "CELERY_", "CACHE_", "EMAIL_"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "mailadmin.settings",
            "DATABASE_URL": database_url,
            "SECRET_KEY": BENCH_SECRET_KEY,
            "CREDENTIAL_ENCRYPTION_KEYS": BENCH_FERNET_KEY,
            "DEBUG": "1",  # the self-signed development certificate for the smtpd
            "VAR_DIR": str(var),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def prepare_data(runs: int) -> None:
    from mailadmin.accounts.mailboxes import create_mailbox
    from mailadmin.accounts.models import Domain, Mailbox
    from mailadmin.monitoring import models as m
    from mailadmin.staff.accounts import create_staff
    from mailadmin.staff.models import Role, User

    # The bench database's monitoring data is this run's only.
    for model in (m.PendingDigest, m.AlertMailLog, m.Block, m.Alert, m.AuthEvent, m.Rollup, m.HourlyRollup):
        model.objects.all().delete()
    m.UserBaseline.objects.all().delete()
    m.AllowedNetwork.objects.filter(cidr__startswith="127.").delete()
    domain, _ = Domain.objects.get_or_create(name=DOMAIN)
    existing = set(Mailbox.objects.filter(domain=domain).values_list("local_part", flat=True))
    for run in range(runs):
        if f"lat{run:04d}" not in existing:
            create_mailbox(domain, f"lat{run:04d}", password=PASSWORD)
    if not User.objects.filter(email=ROOT_ADMIN).exists():
        create_staff(ROOT_ADMIN, role=Role.SUPERADMIN)
    if not User.objects.filter(email=DOMAIN_ADMIN).exists():
        create_staff(DOMAIN_ADMIN, role=Role.DOMAIN_ADMIN, domains=[domain])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))]


class BlockWatch(threading.Thread):
    """Polls PostgreSQL for the block row (its own connection): when the worker's commit
    became visible, to split "block" into worker side (t0 -> committed) and smtpd side."""

    def __init__(self, ip: str):
        super().__init__(daemon=True)
        self.ip, self.seen_at, self.stop = ip, None, threading.Event()

    def run(self):
        from django.db import connections

        from mailadmin.monitoring.models import Block

        try:
            while not self.stop.is_set() and self.seen_at is None:
                if Block.objects.filter(value=self.ip).exists():
                    self.seen_at = time.monotonic()
                time.sleep(0.01)
        finally:
            connections.close_all()


def one_run(run: int, port: int, inbox) -> dict:
    from tests.integration.pipeline import attack, auth_plain, wait_until_blocked

    a, b, c, name = source(run, 0), source(run, 1), source(run, 2), user(run)
    result = {"run": run}
    attack(port, a, name, GUESSES[:9])
    watch = BlockWatch(a)
    watch.start()
    t0 = time.monotonic()
    auth_plain(port, a, name, [GUESSES[9]], helo="attacker.test")
    enforced = wait_until_blocked(port, a, name, GUESSES[0], timeout=TIMEOUT)
    watch.stop.set()
    watch.join()
    result["block"] = enforced[0] - t0 if enforced else None
    result["block_in_db"] = watch.seen_at - t0 if watch.seen_at else None
    mail = inbox.wait_for(lambda m: "IP brute force" in m.subject and a in m.subject, TIMEOUT)
    result["high_mail"] = mail.at - t0 if mail else None

    attack(port, b, name, GUESSES[9:16])
    account = inbox.wait_for(lambda m: "Account brute force" in m.subject and name in m.subject, TIMEOUT)
    if account is None:
        result["critical_mail"] = result["critical_block"] = None
        return result
    t1 = time.monotonic()
    replies = auth_plain(port, c, name, [PASSWORD], helo="intruder.test")
    assert replies and replies[0][0] == 235, replies
    enforced = wait_until_blocked(port, c, name, PASSWORD, timeout=TIMEOUT)
    result["critical_block"] = enforced[0] - t1 if enforced else None
    mail = inbox.wait_for(lambda m: "CRITICAL" in m.subject and name in m.subject, TIMEOUT)
    result["critical_mail"] = mail.at - t1 if mail else None
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/mailadmin_latency_bench")
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    env = base_env(args.database_url, tmp / "var")
    os.environ.update(env)
    prepare_database(args.database_url, env)
    import django

    django.setup()
    import logging

    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command lines
    from django.db import connections

    from tests.integration.pipeline import CeleryWorker, Inbox, pipeline_env
    from tests.smtpd.conftest import SmtpdProcess
    from tests.smtpd.test_events import ThrowawayRedis, free_port

    prepare_data(args.runs)
    connections.close_all()

    redis = ThrowawayRedis(tmp).start()
    inbox = Inbox(free_port()).start()
    shared = pipeline_env(
        env,
        broker_url=redis.url,
        cache_url=f"redis://127.0.0.1:{redis.port}/1",
        mail_port=inbox.port,
        MONITORING_ALERT_MAILS_PER_HOUR=1_000_000,
    )
    worker = CeleryWorker(shared, tmp / "worker.log", concurrency=args.concurrency)
    smtpd_env = dict(
        shared,
        SMTPD_AUTH_FAIL_DELAY="0",
        SMTPD_MAX_AUTH_FAILURES="1000",  # the block probe reuses one connection
        SMTPD_AUTH_RATE_PER_IP="1000000",
        SMTPD_METRICS_LISTEN="127.0.0.1:0",
        SMTPD_SPOOL_DIR=str(tmp / "spool"),
        SMTPD_MAILDIR=str(tmp / "maildir"),
        SMTPD_HOSTNAME="latency.localhost",
        SMTPD_NODE_NAME="latency-node",
    )
    server = SmtpdProcess(tmp, smtpd_env)
    results = []
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    try:
        worker.start()
        server.start()
        worker.wait_ready()
        for run in range(args.runs):
            row = one_run(run, server.tls, inbox)
            results.append(row)
            print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    finally:
        server.stop()
        worker.stop()
        inbox.stop()
        redis.proc.terminate()
        redis.proc.wait()
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    print(f"\nuptime before: {uptime_before}\nuptime after:  {uptime_after}")
    print(f"{'measure':<16} {'n':>3} {'missed':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    summary = {}
    for key in ("block", "block_in_db", "high_mail", "critical_block", "critical_mail"):
        values = [r[key] for r in results if r.get(key) is not None]
        missed = len(results) - len(values)
        if values:
            p50, p95, top = statistics.median(values), percentile(values, 0.95), max(values)
            print(f"{key:<16} {len(values):>3} {missed:>6} {p50:>7.2f} {p95:>7.2f} {top:>7.2f}")
            summary[key] = {"n": len(values), "missed": missed, "p50": p50, "p95": p95, "max": top}
        else:
            print(f"{key:<16} {0:>3} {missed:>6}")
    print(json.dumps({"summary": summary}))
    if args.keep:
        print(f"logs in {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
