"""Where an idle smtpd's memory goes: parent and workers, fresh, after load, with
N idle sessions open, after they close.

    flock /work/wt/bench.lock .venv/bin/python bench/smtp_memory.py \\
        [--workers 1,2] [--idle 1000] [--load 4] [--plain] [--tracemalloc] [--trim]

For each worker count it starts `python -m smtpd --workers N` (STARTTLS listener on
an ephemeral loopback port, the bench database and a private redis-server, as
bench/smtp_auth.py), then measures every process's RSS, PSS and USS (private pages)
from /proc/PID/smaps_rollup:

- fresh: 3 s after "smtpd ready";
- after load (`--load S`): S s of repeated AUTH PLAIN at c=32, then S s with half of
  the connections failing (each failure runs Argon2), as in bench/smtp_auth.py;
- idle: N sessions open (connect, EHLO, STARTTLS, EHLO; `--plain`: EHLO only, no
  TLS, which separates the TLS share from the session's own);
- idle settled: the same sessions `--settle` s later (25 s: the worker's
  housekeeping has run once the burst of new sessions ended);
- closed: 2 s after the client closed them all.

PSS counts a page shared by k processes as 1/k in each, so the PSS of parent +
workers is what the smtpd occupies; RSS counts shared pages once per process.

`--tracemalloc` runs the smtpd under tracemalloc (use with --workers 1; it slows
the server and inflates RSS, so take the RSS figures from a run without it) and
prints the Python allocations that grew between "before idle" and "idle", per
source line: the Python share of a connection. What RSS grows by beyond that is C
memory (OpenSSL, malloc overhead). `--trim` asks each process to run gc.collect(), then
glibc's malloc_trim(0), after the sessions closed, measuring after each (what
the garbage and the heap could give back). Both work through a small wrapper around `python -m smtpd` that
installs SIGUSR1 (snapshot), SIGUSR2 (gc.collect) and SIGWINCH (malloc_trim) handlers; the smtpd itself
is unchanged. Results: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.smtp_auth import (  # noqa: E402
    HOST,
    ROOT,
    Smtpd,
    bench_env,
    children,
    client_context,
    half_failing_plan,
    open_tls_session,
    prepare_database,
    prepare_mailboxes,
    read_reply,
    repeated_plan,
    run_cell,
    start_private_redis,
    stop,
)

# Runs `python -m smtpd` with two extra signal handlers (inherited by forked workers).
WRAPPER = """
import ctypes, os, signal, sys, tracemalloc
frames = int(os.environ.get("SMTPD_MEM_TRACEMALLOC") or 0)
if frames:
    tracemalloc.start(frames)
counter = [0]
def snapshot(signum, frame):
    counter[0] += 1
    path = os.path.join(os.environ["SMTPD_MEM_DIR"], f"{os.getpid()}.{counter[0]}.snap")
    with open(path + ".modules", "w") as fh:
        fh.write(" ".join(sorted(sys.modules)))
    tracemalloc.take_snapshot().dump(path + ".tmp")
    os.rename(path + ".tmp", path)
def collect(signum, frame):
    import gc
    gc.collect()
def trim(signum, frame):
    ctypes.CDLL("libc.so.6").malloc_trim(0)
signal.signal(signal.SIGUSR1, snapshot)
signal.signal(signal.SIGUSR2, collect)
signal.signal(signal.SIGWINCH, trim)
from smtpd.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def smaps(pid: int) -> dict:
    """RSS, PSS and USS (private clean + dirty) in KiB."""
    values = {"rss": 0, "pss": 0, "uss": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key.lower()] = int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                values["uss"] += int(rest.split()[0])
    except OSError:
        pass
    return values


def measure(smtpd: Smtpd) -> dict:
    """The parent (None with --workers 1: the one process serves) and the workers' sums."""
    parent_pid = smtpd.proc.pid
    workers = children(parent_pid) or [parent_pid]
    parent = smaps(parent_pid) if workers != [parent_pid] else None
    total = {k: sum(smaps(p)[k] for p in workers) for k in ("rss", "pss", "uss")}
    every = {k: total[k] + (parent[k] if parent else 0) for k in total}
    threads = sum(_status(p, "Threads") for p in workers)
    return {"parent": parent, "workers": total, "all": every, "worker_pids": workers, "threads": threads, "db": _db()}


def _status(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _db() -> int:
    """The smtpd's connections to the bench database (this one excluded)."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        return conn.execute(query).fetchone()[0]


async def open_idle(port: int, count: int, plain: bool) -> tuple[list, int]:
    context = client_context()
    sessions, errors = [], 0
    semaphore = asyncio.Semaphore(32)

    async def open_one():
        nonlocal errors
        async with semaphore:
            try:
                if plain:
                    reader, writer = await asyncio.open_connection(HOST, port)
                    await read_reply(reader)
                    writer.write(b"EHLO bench.client\r\n")
                    await read_reply(reader)
                    sessions.append((reader, writer))
                else:
                    sessions.append(await open_tls_session(port, context))
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                errors += 1

    await asyncio.gather(*(open_one() for _ in range(count)))
    return sessions, errors


async def wait_snapshots(directory: Path, pids: list[int], index: int, timeout: float = 60) -> list[Path]:
    for pid in pids:
        os.kill(pid, signal.SIGUSR1)
    paths = [directory / f"{pid}.{index}.snap" for pid in pids]
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return paths


def python_growth(before: Path, after: Path, connections: int, top: int = 15) -> None:
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    diff = new.compare_to(old, "lineno")
    grown = sum(d.size_diff for d in diff)
    print(
        f"  Python allocations (tracemalloc): {grown / 1024:+.0f} KiB, {grown / max(connections, 1):.0f} B per session"
    )
    for d in sorted(diff, key=lambda d: -d.size_diff)[:top]:
        frame = d.traceback[0]
        print(
            f"    {d.size_diff / max(connections, 1):9.0f} B {d.count_diff / max(connections, 1):8.2f} blocks"
            f"  {frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        )


def row(label: str, m: dict) -> str:
    p = m["parent"]
    parent = (
        f"{p['rss'] / 1024:6.1f} {p['pss'] / 1024:6.1f} {p['uss'] / 1024:6.1f}" if p else f"{'-':>6} {'-':>6} {'-':>6}"
    )
    w, a = m["workers"], m["all"]
    return (
        f"  {label:<12} {parent} | {w['rss'] / 1024:7.1f} {w['pss'] / 1024:7.1f} {w['uss'] / 1024:7.1f} |"
        f" {a['pss'] / 1024:7.1f} {a['uss'] / 1024:7.1f} | {m['threads']:7d} {m['db']:4d}"
    )


async def run(args, env: dict, workers: int, tmp: Path) -> dict:
    command = [sys.executable, "-c", WRAPPER]
    env = dict(env, SMTPD_MEM_DIR=str(tmp))
    if args.tracemalloc:
        env["SMTPD_MEM_TRACEMALLOC"] = "1"
    smtpd = Smtpd(env, ROOT / "var" / "bench-memory" / "smtpd.log", workers=workers, command=command).start(
        f"bench-mem-{workers}"
    )
    results = {}
    try:
        await asyncio.sleep(3)
        results["fresh"] = measure(smtpd)
        snapshots = 0
        if args.load:
            if args.tracemalloc:
                snapshots += 1
                before_load = await wait_snapshots(tmp, results["fresh"]["worker_pids"], snapshots)
            await run_cell(smtpd.port, 32, repeated_plan, duration=args.load)
            await run_cell(smtpd.port, 32, half_failing_plan(32, args.users), duration=args.load)
            await asyncio.sleep(2)
            results["after load"] = measure(smtpd)
            if args.tracemalloc:
                snapshots += 1
                after_load = await wait_snapshots(tmp, results["fresh"]["worker_pids"], snapshots)
            if args.settle:
                await asyncio.sleep(args.settle)
                results["load settled"] = measure(smtpd)
        pids = results["fresh"]["worker_pids"]
        if args.tracemalloc:
            snapshots += 1
            before = await wait_snapshots(tmp, pids, snapshots)
        results["before idle"] = measure(smtpd)
        sessions, errors = await open_idle(smtpd.port, args.idle, args.plain)
        await asyncio.sleep(2)
        results["idle"] = measure(smtpd)
        results["open"], results["errors"] = len(sessions), errors
        if args.settle:
            await asyncio.sleep(args.settle)
            results["idle settled"] = measure(smtpd)
        if args.tracemalloc:
            snapshots += 1
            after = await wait_snapshots(tmp, pids, snapshots)
        for _, writer in sessions:
            writer.close()
        await asyncio.sleep(2)
        results["closed"] = measure(smtpd)
        if args.trim:
            for signum, label in ((signal.SIGUSR2, "gc.collect"), (signal.SIGWINCH, "malloc_trim")):
                for pid in [smtpd.proc.pid, *pids] if workers > 1 else pids:
                    os.kill(pid, signum)
                await asyncio.sleep(1)
                results[label] = measure(smtpd)
    finally:
        smtpd.stop()

    kind = "EHLO only (no TLS)" if args.plain else "STARTTLS + EHLO"
    print(f"\n--workers {workers}: {results['open']} idle sessions ({kind}), {results['errors']} errors")
    print(
        f"  {'MiB':<12} {'parent RSS / PSS / USS':>20} | {'workers RSS / PSS / USS':>23} | all PSS / USS | threads  db"
    )
    for label in (
        "fresh",
        "after load",
        "load settled",
        "before idle",
        "idle",
        "idle settled",
        "closed",
        "gc.collect",
        "malloc_trim",
    ):
        if label in results:
            print(row(label, results[label]))
    b, i = results["before idle"], results["idle"]
    n = max(results["open"], 1)
    print(
        "  per idle session: "
        + ", ".join(f"{k} {(i['all'][k] - b['all'][k]) / n:.1f} KiB" for k in ("pss", "uss"))
        + f", workers' RSS {(i['workers']['rss'] - b['workers']['rss']) / n:.1f} KiB"
    )
    if args.tracemalloc:
        if args.load:
            print("  during the load phases, per worker:")
            for old, new in zip(before_load, after_load, strict=True):
                python_growth(old, new, 1)
                imported = set(Path(f"{new}.modules").read_text().split()) - set(
                    Path(f"{old}.modules").read_text().split()
                )
                print(f"  imported after the fork ({len(imported)}): {' '.join(sorted(imported))}")
        print("  with the idle sessions open, per worker:")
        for old, new in zip(before, after, strict=True):
            python_growth(old, new, n)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/mailadmin_bench")
    p.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    p.add_argument("--idle", type=int, default=1000)
    p.add_argument(
        "--load", type=float, default=0, help="seconds of each load phase before the idle sessions (0: none)"
    )
    p.add_argument("--users", type=int, default=200, help="mailboxes for the load phases")
    p.add_argument("--settle", type=float, default=25, help="measure again this long after the sessions opened (0: no)")
    p.add_argument("--plain", action="store_true", help="idle sessions without TLS (EHLO only)")
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--trim", action="store_true", help="malloc_trim(0) in every process after the sessions close")
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    private_redis, args.redis_url = start_private_redis()
    var = ROOT / "var" / "bench-memory"
    try:
        env = bench_env(args, var)
        os.environ.update(env)
        sys.path.insert(0, str(ROOT))
        prepare_database(args.database_url, env)
        import django

        django.setup()
        from smtpd.server import development_certificate

        if args.load:
            prepare_mailboxes(args.users)
        cert, key = development_certificate(var / "tls", "bench.localhost")
        env = bench_env(args, var, cert, key)
        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        with tempfile.TemporaryDirectory(prefix="smtp_memory-") as tmp:
            for workers in args.workers:
                asyncio.run(run(args, env, workers, Path(tmp)))
        print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    finally:
        stop(private_redis)
    return 0


if __name__ == "__main__":
    sys.exit(main())
