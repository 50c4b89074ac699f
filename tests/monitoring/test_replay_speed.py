"""The replay speed-ups return exactly what the ORM queries they stand for return."""

import datetime as dt

import pytest

from mailadmin.monitoring import detectors
from mailadmin.monitoring.detectors import DEFAULTS
from mailadmin.monitoring.ingest import ingest_events

from .factories import BASE, event

M = dt.timedelta(minutes=1)


@pytest.mark.django_db
def test_compiled_once_window_counts_equal_the_orm():
    events = [
        event(
            f"203.0.113.{i % 3}",
            f"u{i % 7}@a.example",
            "unknown_user" if i % 4 else "bad_credentials",
            ts=BASE + i * M,
            pw_fp=None if i % 5 == 0 else i,  # a missing fingerprint still counts as a credential
        )
        for i in range(40)
    ]
    ingest_events(events, replay=True, detect=False)
    detectors._COMPILED.clear()
    rows = 0
    for T in (BASE + 10 * M, BASE + 39 * M, BASE + 2 * dt.timedelta(days=1)):
        for column, keys in (
            ("client_ip", ["203.0.113.0", "203.0.113.1", "198.51.100.9"]),
            ("prefix", ["203.0.113.0/24"]),
        ):
            windows = {rule: float(DEFAULTS[rule]["window_minutes"]) for rule in ("spray", "low_and_slow")}
            if column == "client_ip":
                windows = {"ip_bruteforce": 10.0, **windows, "stuffing": 60.0}
            for _ in range(2):  # the first call compiles, the second reuses
                got = detectors._source_stats(column, keys, windows, T)
                rows += len(got)
                assert sorted(got, key=str) == sorted(detectors._source_queryset(column, keys, windows, T), key=str)
        users = [f"u{i}@a.example" for i in range(7)]
        rules = {r: DEFAULTS[r] for r in ("account_bruteforce", "slow_distributed")}
        for _ in range(2):
            got = detectors._account_stats(users, rules, T)
            rows += len(got)
            assert sorted(got, key=str) == sorted(detectors._account_queryset(users, rules, T), key=str)
    assert rows > 0
    assert detectors._COMPILED and all(sql is not None for sql in detectors._COMPILED.values())
