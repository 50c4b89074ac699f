"""Batching, spooling publisher for auth events (and sent-message counts).

`publish()` is called on the event loop and only appends to a list under a
lock: it never blocks on the broker and never raises. A collector thread cuts
batches (500 items or 250 ms) and hands them to a sender thread; when the
broker is down, or the sender falls behind, batches are written to an on-disk
spool (one JSON file per batch, named by sequence number) and replayed in
order once the broker answers again. Memory holds at most the items of one
flush interval plus a few batches in flight; the disk holds the rest.

Delivery is at least once: a batch whose publish failed ambiguously may
arrive twice, so every event carries a UUID and ingest is idempotent.
"""

import itertools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("smtpd.events")

AUTH_EVENTS_TASK = "monitoring.ingest_auth_events"
MESSAGES_SENT_TASK = "monitoring.record_messages_sent"

Sender = Callable[[str, list], None]


def celery_sender(task_name: str, batch: list) -> None:
    """Publish one batch by task name to the ingest queue; raises when the broker is down."""
    from mailadmin.celery import app

    app.send_task(task_name, args=[batch], queue="ingest", retry=False)


class SpoolingPublisher:
    def __init__(
        self,
        spool_dir: Path,
        send: Sender = celery_sender,
        *,
        # The contract (issue 4, DESIGN): flush at 500 events or 250 ms. Ingest's cost per
        # event falls with the batch size (bench/README.md), but 500 keeps one task short.
        batch_size: int = 500,
        flush_interval: float = 0.25,
        in_flight: int = 4,
        retry_interval: float = 1.0,
    ):
        self.spool_dir = Path(spool_dir)
        self.dropped = 0  # events lost because the spool could not be written (metric)
        self._spool_error_logged = False
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            # AUTH must keep working without a spool: events still go to the broker.
            log.error(
                "event spool %s is not usable (%s): auth events are published directly "
                "and DROPPED while the broker is down; fix the directory's permissions",
                self.spool_dir,
                exc.strerror or type(exc).__name__,
            )
        self._send = send
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_interval = retry_interval
        self._lock = threading.Lock()
        self._pending: dict[str, list] = {}
        self._pending_count = 0
        self._wake = threading.Event()
        self._handoff: queue.Queue = queue.Queue(maxsize=in_flight)
        self._stopping = threading.Event()
        self._broker_ok = True
        existing = [self._seq_of(p) for p in self._spool_files()]
        self._seq = itertools.count(max(existing, default=0) + 1)
        self._spooled = len(existing)
        self._spool_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._collect_loop, name="events-collector", daemon=True),
            threading.Thread(target=self._send_loop, name="events-sender", daemon=True),
        ]
        self.published = 0  # items handed to the broker (for metrics and tests)

    # --- called from the event loop ---

    def publish(self, task_name: str, item: dict) -> None:
        with self._lock:
            self._pending.setdefault(task_name, []).append(item)
            self._pending_count += 1
            full = self._pending_count >= self.batch_size
        if full:
            self._wake.set()

    @property
    def queue_depth(self) -> int:
        return self._pending_count + self._handoff.qsize() * self.batch_size

    @property
    def spooled_batches(self) -> int:
        return self._spooled

    def start(self) -> "SpoolingPublisher":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is in memory (to the broker, or else to the spool) and stop."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)

    # --- collector thread ---

    def _take_batches(self) -> list[tuple[str, list]]:
        with self._lock:
            pending, self._pending, self._pending_count = self._pending, {}, 0
        batches = []
        for task_name, items in pending.items():
            for start in range(0, len(items), self.batch_size):
                batches.append((task_name, items[start : start + self.batch_size]))
        return batches

    def _collect_loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            stopping = self._stopping.is_set()
            for task_name, items in self._take_batches():
                seq = next(self._seq)
                # Straight to the sender only when nothing older waits on disk,
                # so replay keeps the original order.
                if self._broker_ok and self._spooled == 0 and not stopping:
                    try:
                        self._handoff.put_nowait((seq, task_name, items))
                        continue
                    except queue.Full:
                        pass
                self._spool(seq, task_name, items)
            if stopping:
                self._handoff.put(None)
                return

    # --- sender thread ---

    def _send_loop(self) -> None:
        while True:
            try:
                job = self._handoff.get(timeout=self.retry_interval)
            except queue.Empty:
                job = ()
            if job is None:  # stop: spool whatever the collector handed over late
                self._drain_handoff_to_spool()
                self._replay(final=True)
                return
            if job:
                seq, task_name, items = job
                if not self._try_send(task_name, items):
                    self._spool(seq, task_name, items)
                    self._drain_handoff_to_spool()
            if self._spooled:
                self._replay()

    def _drain_handoff_to_spool(self) -> None:
        while True:
            try:
                job = self._handoff.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._handoff.put_nowait(None)
                return
            self._spool(*job)

    def _try_send(self, task_name: str, items: list) -> bool:
        try:
            self._send(task_name, items)
        except Exception as exc:  # any broker error: keep the batch on disk
            if self._broker_ok:
                log.warning("broker unavailable, spooling auth events: %s", type(exc).__name__)
            self._broker_ok = False
            return False
        if not self._broker_ok:
            log.info("broker available again, replaying the spool")
        self._broker_ok = True
        self.published += len(items)
        return True

    def _replay(self, final: bool = False) -> None:
        """Send spooled batches oldest first; stop at the first failure."""
        for path in self._spool_files():
            if not final and self._stopping.is_set():
                return
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                log.error("unreadable spool file %s kept aside", path.name)
                path.rename(path.with_suffix(".bad"))
                self._count_spooled(-1)
                continue
            if not self._try_send(record["task"], record["items"]):
                if not final:
                    time.sleep(self.retry_interval)
                return
            path.unlink()
            self._count_spooled(-1)

    # --- spool files ---

    def _spool(self, seq: int, task_name: str, items: list) -> None:
        path = self.spool_dir / f"{seq:016d}.json"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as fh:
                json.dump({"task": task_name, "items": items}, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            tmp.rename(path)
        except OSError as exc:
            # Unwritable or full disk: say so loudly (once per outage), count the loss,
            # and keep the sender alive so publishing resumes with the broker.
            self.dropped += len(items)
            if not self._spool_error_logged:
                log.error(
                    "cannot write the event spool %s (%s): auth events are being DROPPED until the "
                    "broker is back or the spool is writable",
                    self.spool_dir,
                    exc.strerror or type(exc).__name__,
                )
                self._spool_error_logged = True
            return
        self._spool_error_logged = False
        self._count_spooled(+1)

    def _count_spooled(self, delta: int) -> None:
        with self._spool_lock:
            self._spooled += delta

    def _spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.json"), key=self._seq_of)

    @staticmethod
    def _seq_of(path: Path) -> int:
        try:
            return int(path.stem)
        except ValueError:
            return 0
