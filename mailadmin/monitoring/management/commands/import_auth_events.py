"""manage.py import_auth_events FILE.jsonl [--as-of-original-time]

Feeds historical auth events (the DESIGN contract, one JSON object per line)
through the same ingest and detectors as live traffic, for back-testing rule
changes. Events are cut into batches of at most --batch-size events and
--batch-seconds of event time; inside a batch the detectors judge each minute
of event time on its own, so windowed rules see the trace as they would have
live. Bad lines are reported by number and skipped; re-running a file
inserts nothing twice.

Detectors always judge an event at its own time (windows, baselines, blocks
and auto-resolve use the events' clock, never now()), and imported timestamps
are kept exactly, even ahead of this machine's clock (live ingest clamps
those). --as-of-original-time states that explicitly; it is the only mode,
so a trace replays the same way with or without it.
"""

import datetime as dt
import json
import sys
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from mailadmin.monitoring.ingest import IngestReport, InvalidEvent, ingest_events, parse_ts


class Command(BaseCommand):
    help = "Replay auth events from a JSONL file through ingest and the detectors."

    def add_arguments(self, parser):
        parser.add_argument("file", help="JSONL file, or - for standard input")
        parser.add_argument(
            "--as-of-original-time", action="store_true", help="evaluate at the events' own times (always done)"
        )
        parser.add_argument("--batch-size", type=int, default=5000)
        parser.add_argument("--batch-seconds", type=float, default=900.0)
        parser.add_argument("--send-email", action="store_true", help="mail alerts raised (off: back-test quietly)")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    def handle(self, *args, file, as_of_original_time, batch_size, batch_seconds, send_email, quiet, **options):
        try:
            handle = sys.stdin if file == "-" else open(file, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from None
        total_bytes = None
        if handle is not sys.stdin:
            handle.seek(0, 2)
            total_bytes = handle.tell()
            handle.seek(0)
        if connection.vendor == "postgresql":
            # A replay can be re-run (idempotent): trade the per-commit disk flush for speed.
            with connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit TO OFF")
        self.totals = IngestReport()
        self.bad_lines = 0
        self.started = time.monotonic()
        self.notify = send_email
        batch, batch_start = [], None
        span = dt.timedelta(seconds=batch_seconds)
        last_progress = 0.0
        with handle:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line:
                    continue
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError("not a JSON object")
                    ts = parse_ts(event.get("ts"))
                except (ValueError, InvalidEvent) as exc:
                    self.stderr.write(f"line {number}: skipped: {str(exc)[:120]}")
                    self.bad_lines += 1
                    continue
                if batch and (len(batch) >= batch_size or abs(ts - batch_start) > span):
                    self._flush(batch)
                    batch = []
                if not batch:
                    batch_start = ts
                batch.append(event)
                now = time.monotonic()
                if not quiet and now - last_progress > 1.0:
                    last_progress = now
                    self._progress(handle.tell() if total_bytes else None, total_bytes)
        if batch:
            self._flush(batch)
        if not quiet:
            self._progress(total_bytes, total_bytes)
            self.stderr.write("")
        t = self.totals
        self.stdout.write(
            f"{t.inserted} inserted, {t.duplicates} duplicate(s), {t.invalid + self.bad_lines} bad line(s)/event(s) "
            f"skipped, {t.alerts} alert(s) raised in {time.monotonic() - self.started:.1f} s"
        )

    def _flush(self, batch):
        report = ingest_events(batch, replay=True, notify=self.notify)
        t = self.totals
        t.received += report.received
        t.inserted += report.inserted
        t.duplicates += report.duplicates
        t.invalid += report.invalid
        t.alerts += report.alerts

    def _progress(self, done, total):
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.totals.received / elapsed
        if total:
            frac = min(done / total, 1.0) if total else 1.0
            bar = "#" * int(frac * 30)
            self.stderr.write(
                f"\r[{bar:<30}] {frac * 100:5.1f}%  {self.totals.received} events  {rate:,.0f}/s", ending=""
            )
        else:
            self.stderr.write(f"\r{self.totals.received} events  {rate:,.0f}/s", ending="")
        self.stderr.flush()
