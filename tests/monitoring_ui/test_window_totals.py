"""Window totals (24 h / 7 d / 30 d): the overview read from them shows exactly what the
events say, for superadmins and domain admins, while the windows advance, as live events
arrive and after late (replayed) events."""

import datetime as dt
import random
from collections import Counter

import pytest

from mailadmin.monitoring import charts, windows
from mailadmin.monitoring.models import FAILURE_RESULTS, AuthEvent, WindowState, WindowTotal
from tests.monitoring.factories import event

from .conftest import ingest

RESULTS = ["success", "success", "bad_credentials", "unknown_user", "blocked", "disabled"]
IPS = [f"203.0.113.{i}" for i in range(9)] + ["2001:db8::7", "198.51.100.10"]
USERS = [f"u{i}@a.example" for i in range(5)] + [f"u{i}@b.example" for i in range(4)] + ["", "nodomain"]


def month_of_events(now, n=400, seed=11):
    """Events over the last 31 days, some in the current hour and at the hour edges."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ts = now - dt.timedelta(minutes=rng.randrange(0, 31 * 24 * 60), seconds=rng.randrange(60))
        out.append(_random_event(rng, ts))
    out += [_random_event(rng, now - dt.timedelta(seconds=s)) for s in range(0, 120, 7)]
    return out


def _random_event(rng, ts):
    return event(
        client_ip=rng.choice(IPS),
        username=rng.choice(USERS),
        result=rng.choice(RESULTS),
        ts=ts,
        pw_fp=rng.randrange(50),
        mechanism=rng.choice(["PLAIN", "LOGIN", ""]),
        tls=rng.choice(["TLSv1.3", ""]),
        listener=rng.choice([587, 465, "web"]),
    )


def expected(tr, *domains):
    """The overview's numbers computed from the events (ties by key as text)."""
    events = AuthEvent.objects.filter(ts__gte=tr.start, ts__lt=tr.end)
    domain = bool(domains)
    if domains:
        events = events.filter(domain_name__in=domains)
    events = list(events)
    failures = [e for e in events if e.result != "success"]

    def top(values, limit=charts.TOP_LIMIT):
        return sorted(Counter(values).items(), key=lambda kv: (-kv[1], kv[0]))[:limit]

    buckets = {b: [0, 0] for b in tr.buckets()}
    for e in events:
        buckets[charts.floor_to(e.ts, tr.bucket)][0 if e.result != "success" else 1] += 1
    tried = {}
    for e in events:
        tried.setdefault(e.client_ip, set()).add(e.username)
    return {
        "failed": [v[0] for v in buckets.values()],
        "success": [v[1] for v in buckets.values()],
        "reasons": sorted(Counter(e.result for e in failures).values(), reverse=True),
        "top_users": [[k, n] for k, n in top(e.username for e in failures if domain or e.username)],
        "top_ips": [(k, n, len(tried[k])) for k, n in top(e.client_ip for e in failures)],
        "mechanisms": sorted(Counter(e.mechanism for e in failures if domain or e.mechanism).values(), reverse=True),
        "listeners": sorted(Counter((e.listener, e.tls) for e in failures).values(), reverse=True),
        "attacking_ips": len({e.client_ip for e in events if e.result in FAILURE_RESULTS}),
    }


def fresh(user):
    """The user as a new request sees it (charts keep the window state for a request's length)."""
    return type(user).objects.get(pk=user.pk)


def shown(user, tr):
    from django.core.cache import cache

    cache.clear()
    user = fresh(user)
    timeline = charts.timeline(user, tr)
    return {
        "failed": timeline.series["failed"],
        "success": timeline.series["success"],
        "reasons": [n for _, n in charts.reasons(user, tr).rows],
        "top_users": charts.top_users(user, tr).rows,
        "top_ips": [(r[0], r[3], r[4]) for r in charts.top_ips(user, tr).rows],
        "mechanisms": [n for _, n in charts.mechanisms(user, tr).rows],
        "listeners": [n for _, n in charts.listeners(user, tr).rows],
        "attacking_ips": charts.counters(user, tr)["attacking_ips"],
    }


@pytest.fixture
def admin_ab(db, domain_a, domain_b):
    from mailadmin.staff.accounts import create_staff
    from mailadmin.staff.models import Role

    user, _ = create_staff("admin-ab@staff.example", role=Role.DOMAIN_ADMIN, domains=[domain_a, domain_b])
    return user


def assert_exact(superadmin, admin_a, now, *, via_windows=True, admin_ab=None):
    for preset in windows.WINDOWS:
        tr = charts.preset_range(preset, now)
        if via_windows is not None:
            assert (charts.window_for(fresh(superadmin), tr) is not None) is via_windows, preset
        assert shown(superadmin, tr) == expected(tr), preset
        assert shown(admin_a, tr) == expected(tr, "a.example"), preset
        if admin_ab is not None:  # two domains: their keys are summed, not read as one scope
            assert shown(admin_ab, tr) == expected(tr, "a.example", "b.example"), preset


def totals():
    return Counter(
        {
            (t.preset, t.scope, t.dimension, t.key, t.sub): (t.failures, t.attacks, t.total)
            for t in WindowTotal.objects.all()
        }
    )


@pytest.mark.django_db
def test_overview_from_window_totals_is_exact_for_every_role_and_range(superadmin, admin_a, admin_ab, now):
    ingest(*month_of_events(now))
    assert windows.advance(now) == {"24h": "rebuilt", "7d": "rebuilt", "30d": "rebuilt"}
    assert windows.advance(now) == {"24h": "current", "7d": "current", "30d": "current"}
    assert_exact(superadmin, admin_a, now, admin_ab=admin_ab)
    # A domain admin's window rows are all of their domain (or pairs of it); nothing of b.example leaks.
    tr = charts.preset_range("30d", now)
    shown_a = charts.top_users(admin_a, tr).rows + charts.top_ips(admin_a, tr).rows
    assert shown_a and not any("b.example" in str(cell) for row in shown_a for cell in row)

    # Live events of the current hour: read from the rollups next to the window, no rebuild.
    rng = random.Random(3)
    ingest(*[_random_event(rng, now - dt.timedelta(seconds=s)) for s in range(30)])
    assert not WindowState.objects.filter(stale=True).exists()
    assert_exact(superadmin, admin_a, now)

    # A replayed batch of last week's and yesterday's events: added to the windows holding
    # those hours by ingest itself (no rebuild), new IPs and users included.
    versions = dict(WindowState.objects.values_list("preset", "version"))
    late = [_random_event(rng, now - dt.timedelta(days=5, minutes=s)) for s in range(40)]
    late += [event(client_ip="192.0.2.200", username="new@a.example", ts=now - dt.timedelta(hours=20))]
    ingest(*late)
    assert not WindowState.objects.filter(stale=True).exists()
    assert {p: v - versions[p] for p, v in WindowState.objects.values_list("preset", "version")} == {
        "24h": 1,
        "7d": 1,
        "30d": 1,
    }
    assert_exact(superadmin, admin_a, now, admin_ab=admin_ab)
    incremental = totals()
    for preset in windows.WINDOWS:
        state = WindowState.objects.get(preset=preset)
        windows.rebuild(preset, state.first, state.cut)
    assert totals() == incremental


@pytest.mark.django_db
def test_advancing_windows_hour_by_hour_equals_a_rebuild(superadmin, admin_a, now):
    ingest(*month_of_events(now, n=300, seed=5))
    earlier = now - dt.timedelta(hours=7)
    windows.advance(earlier)
    # The charts asked for at `now` use the window built for `earlier`: spans cover the difference
    # (and, in the 24 h range, take out the hours the window holds before the range).
    assert_exact(superadmin, admin_a, now)
    for step in range(1, 8):
        assert set(windows.advance(earlier + dt.timedelta(hours=step)).values()) <= {"advanced", "current"}
    stepped = totals()
    assert_exact(superadmin, admin_a, now)
    for preset in windows.WINDOWS:
        state = WindowState.objects.get(preset=preset)
        windows.rebuild(preset, state.first, state.cut)
    assert totals() == stepped


@pytest.mark.django_db
@pytest.mark.parametrize("minute", [1, 5, 14, 17, 20, 35, 50])
def test_windows_are_exact_at_every_quarter_and_right_after_the_hour(superadmin, admin_a, now, minute):
    """The 24 h window holds quarter hours from the range's start (no span there) and folds a
    quarter hour FOLD_DELAY after it ended (a span of at most 15 minutes + FOLD_DELAY + the
    current quarter at the end); 7 d / 30 d hold hours. Exact at any minute."""
    at = now.replace(minute=minute, second=30)
    ingest(*month_of_events(at, n=250, seed=minute))
    windows.advance(at)
    for preset in windows.WINDOWS:
        tr = charts.preset_range(preset, at)
        first, cut = windows.bounds(preset, at)
        assert first == tr.start, preset
        assert cut == charts.floor_to(at - windows.FOLD_DELAY, windows.GRAIN[preset]), preset
        w = charts.window_for(fresh(superadmin), tr)
        assert [(a, b, sign) for a, b, sign in w.spans] == [(cut, tr.end, 1)], preset
    day = charts.preset_range("24h", at)
    assert day.end - windows.bounds("24h", at)[1] <= 2 * windows.QUARTER + windows.FOLD_DELAY
    assert_exact(superadmin, admin_a, at)


@pytest.mark.django_db
def test_advancing_the_24h_window_quarter_by_quarter_with_live_events_equals_a_rebuild(superadmin, admin_a, now):
    """Minute by minute for 80 minutes, with a live batch each minute: the 24 h window folds a
    quarter hour in (minute rollups) and one out (the range's start) each quarter, and stays
    equal to a rebuild and to the events, a delayed batch included (ingest's note_late)."""
    start = now.replace(minute=2, second=0, microsecond=0) - dt.timedelta(hours=2)
    ingest(*month_of_events(start, n=300, seed=23))
    rng = random.Random(29)
    windows.advance(start)
    steps = Counter()
    for minute in range(1, 81):
        at = start + dt.timedelta(minutes=minute)
        ingest(*[_random_event(rng, at - dt.timedelta(seconds=s)) for s in range(0, 60, 20)])
        if minute == 50:  # a delayed batch of a quarter hour the 24 h window holds, 7 d not yet
            ingest(*[_random_event(rng, at - dt.timedelta(minutes=25, seconds=s)) for s in range(0, 60, 10)])
        steps[windows.advance(at)["24h"]] += 1
        if minute % 20 == 7:
            tr = charts.preset_range("24h", at)
            assert shown(superadmin, tr) == expected(tr), at
            assert shown(admin_a, tr) == expected(tr, "a.example"), at
    assert steps["advanced"] >= 5 and not steps["rebuilt"]
    stepped = totals()
    state = WindowState.objects.get(preset="24h")
    windows.rebuild("24h", state.first, state.cut)
    assert totals() == stepped


@pytest.mark.django_db
@pytest.mark.parametrize("preset", windows.WINDOWS)
def test_a_fragment_reads_each_dimensions_spans_once(superadmin, admin_a, login_as, now, preset):
    """Top IPs and the attacking-IP counter share one query over the IP spans (and the window's
    rows for them); the fragment still shows what the events say."""
    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    at = now  # what the view's range is computed from
    ingest(*month_of_events(at, n=250, seed=41))
    windows.advance(at)
    tr = charts.preset_range(preset, at)
    for user, domains in ((superadmin, ()), (admin_a, ("a.example",))):
        want = expected(tr, *domains)
        client = login_as(user)
        cache.clear()
        with CaptureQueriesContext(connection) as queries:
            response = client.get(reverse("monitoring:overview_fragment"), {"range": preset})
        assert response.status_code == 200
        assert response.context["counters"]["attacking_ips"] == want["attacking_ips"]
        table = next(t for t in response.context["tables"] if t.name == "top_ips")
        assert [(r[0], r[3], r[4]) for r in table.rows] == want["top_ips"]
        # One query per dimension ranked from one scope's window (IPs, mailboxes, mechanisms,
        # countries); the attacking IPs come with the IPs' query, not from a query of their own.
        sql = [q["sql"] for q in queries.captured_queries]
        ranked = [q for q in sql if "WITH d AS (SELECT key, SUM(f) AS f, SUM(a) AS a" in q]
        assert len(ranked) == 4, ranked
        assert sum("'attackers'" in q for q in sql) == sum("'attackers'" in q for q in ranked) == 1
