"""Fixtures for the dashboard tests: real ingested events for two domains and a stranger."""

import datetime as dt

import pytest
from django.core.cache import cache
from django.utils import timezone

from mailadmin.monitoring import blocks, enrich
from mailadmin.monitoring.ingest import ingest_events
from tests.e2e.conftest import browser, page  # noqa: F401  (Playwright fixtures for test_e2e)
from tests.monitoring.factories import event


@pytest.fixture(autouse=True)
def fresh_state():
    """Empty in-process block snapshots and chart cache: each test sees its own data."""
    blocks._snapshot.invalidate_local()
    enrich._named.invalidate()
    cache.clear()
    yield
    blocks._snapshot.invalidate_local()
    enrich._named.invalidate()
    cache.clear()


def ingest(*events):
    return ingest_events(list(events), replay=True, detect=False)


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def attack(db, now):
    """An attacker on a.example users, one success each for a and b, one unknown-user failure on b."""
    t = now - dt.timedelta(minutes=30)
    events = [
        event(client_ip="203.0.113.9", username=f"user{i}@a.example", result="bad_credentials", ts=t, pw_fp=i)
        for i in range(6)
    ]
    events += [
        event(client_ip="198.51.100.20", username="ann@a.example", result="success", ts=t, helo="laptop.a.example"),
        event(client_ip="192.0.2.77", username="bob@b.example", result="success", ts=t, helo="bob-pc"),
        event(client_ip="192.0.2.78", username="zed@b.example", result="unknown_user", ts=t, mechanism="LOGIN"),
    ]
    ingest(*events)
    return {"ts": t, "a_failures": 6, "b_failures": 1}


@pytest.fixture
def login_as(db):
    """A separate logged-in client per user (the shared fixtures all reuse one `client`)."""

    def make(user):
        from django.test import Client

        c = Client()
        c.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        return c

    return make


@pytest.fixture(autouse=True)
def _live_server_closes_its_connections(request):
    """As in tests/e2e: live_server threads must not keep connections open (only for e2e tests)."""
    if "live_server" not in request.fixturenames:
        yield
        return
    from django.db import connections

    saved = connections.settings["default"]["CONN_MAX_AGE"]
    connections.settings["default"]["CONN_MAX_AGE"] = 0
    yield
    connections.settings["default"]["CONN_MAX_AGE"] = saved
