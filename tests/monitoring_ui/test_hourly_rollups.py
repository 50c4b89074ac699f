"""Hourly rollups: always the sums of the minute rollups, and charts read from them show
exactly what the events say."""

import datetime as dt
import random
from collections import Counter

import pytest

from mailadmin.monitoring import charts
from mailadmin.monitoring.hourly import listener_key
from mailadmin.monitoring.models import FAILURE_RESULTS, AuthEvent, HourlyRollup, Rollup
from tests.monitoring.factories import event

from .conftest import ingest

RESULTS = ["success", "success", "bad_credentials", "unknown_user", "blocked"]


def spread_events(now, n=300, seed=7):
    """Events over the last ~40 hours, bunched at minute and hour edges, several listeners."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        ts = now - dt.timedelta(minutes=rng.randrange(0, 40 * 60), seconds=rng.randrange(60))
        events.append(
            event(
                client_ip=f"203.0.113.{rng.randrange(12)}",
                username=f"user{rng.randrange(8)}@{rng.choice(['a', 'b'])}.example",
                result=rng.choice(RESULTS),
                ts=ts,
                pw_fp=rng.randrange(50),
                mechanism=rng.choice(["PLAIN", "LOGIN"]),
                tls=rng.choice(["TLSv1.3", "TLSv1.2", ""]),
                listener=rng.choice([587, 465, 993]),
            )
        )
    # The current minute and hour: the open hour row must be as live as the minute rows.
    events += [event(ts=now, result="bad_credentials", pw_fp=i, listener=465) for i in range(3)]
    return events


def minute_rollups_by_hour() -> Counter:
    totals = Counter()
    for r in Rollup.objects.all():
        totals[(r.dimension, r.key, r.minute.replace(minute=0), r.result)] += r.count
    return totals


def hourly_rollups(*, listener: bool) -> Counter:
    rows = HourlyRollup.objects.all()
    rows = rows.filter(dimension="listener") if listener else rows.exclude(dimension="listener")
    return Counter({(r.dimension, r.key, r.hour, r.result): r.count for r in rows})


def listener_counts_from_events() -> Counter:
    totals = Counter()
    for e in AuthEvent.objects.all():
        hour = e.ts.replace(minute=0, second=0, microsecond=0)
        totals[("listener", listener_key(e.listener, e.tls), hour, e.result)] += 1
    return totals


@pytest.mark.embedded
@pytest.mark.django_db
def test_hourly_and_minute_rollups_agree_after_ingest_and_redelivery(now):
    events = spread_events(now, n=120)
    ingest(*events[:80])
    ingest(*events[40:])  # overlapping redelivery: 40 events again, 43 new
    ingest(*events)  # the whole batch again: nothing new
    assert AuthEvent.objects.count() == len(events)
    assert hourly_rollups(listener=False) == minute_rollups_by_hour()
    assert hourly_rollups(listener=True) == listener_counts_from_events()
    all_hourly = HourlyRollup.objects.filter(dimension="all").values_list("count", flat=True)
    assert sum(all_hourly) == len(events)  # the redeliveries were not counted
    username_rows = HourlyRollup.objects.filter(dimension="username")
    assert all(r.domain_name == r.key.split("@")[1] for r in username_rows)


@pytest.mark.embedded
@pytest.mark.django_db
def test_domain_rollups_count_each_domains_events_per_minute(now):
    ingest(*spread_events(now, n=150))
    ingest(*spread_events(now, n=150)[:60])  # redelivery adds nothing
    expected = Counter()
    for e in AuthEvent.objects.exclude(domain_name=""):
        expected[(e.domain_name, e.ts.replace(second=0, microsecond=0), e.result)] += 1
    rows = Rollup.objects.filter(dimension="domain")
    assert Counter({(r.key, r.minute, r.result): r.count for r in rows}) == expected
    assert all(r.domain_name == r.key for r in rows)


@pytest.mark.django_db
@pytest.mark.parametrize("preset", ["1h", "24h", "7d", "custom"])
def test_a_domain_admins_timeline_from_domain_rollups_is_exactly_their_events(admin_a, now, preset):
    ingest(*spread_events(now))
    if preset == "custom":
        hour = now.replace(minute=0, second=0, microsecond=0)
        tr = charts.custom_range((hour - dt.timedelta(hours=20, minutes=50)).isoformat(), hour.isoformat())
    else:
        tr = charts.preset_range(preset, now)
    buckets = {b: [0, 0] for b in tr.buckets()}
    for e in AuthEvent.objects.filter(ts__gte=tr.start, ts__lt=tr.end, domain_name="a.example"):
        buckets[charts.floor_to(e.ts, tr.bucket)][0 if e.result != "success" else 1] += 1
    series = charts.timeline(admin_a, tr).series
    assert series == {"failed": [v[0] for v in buckets.values()], "success": [v[1] for v in buckets.values()]}
    assert sum(series["failed"]) + sum(series["success"]) > 0


def expected_from_events(tr):
    """Every superadmin chart number, computed from the events themselves."""
    events = list(AuthEvent.objects.filter(ts__gte=tr.start, ts__lt=tr.end))
    failures = [e for e in events if e.result != "success"]

    def top(values):
        counts = Counter(values)
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: charts.TOP_LIMIT]

    buckets = {b: [0, 0] for b in tr.buckets()}
    for e in events:
        bucket = charts.floor_to(e.ts, tr.bucket)
        buckets[bucket][0 if e.result != "success" else 1] += 1
    listener_counts = Counter((e.listener, e.tls) for e in failures)
    return {
        "failed": [v[0] for v in buckets.values()],
        "success": [v[1] for v in buckets.values()],
        "reasons": sorted(Counter(e.result for e in failures).values(), reverse=True),
        "top_users": [[k, n] for k, n in top(e.username for e in failures)],
        "countries": [[k, n] for k, n in top(e.country for e in failures if e.country)],
        "mechanisms": [[k, n] for k, n in top(e.mechanism for e in failures)],
        "top_ips": [(k, n) for k, n in top(e.client_ip for e in failures)],
        "listeners": sorted(listener_counts.values(), reverse=True)[: charts.TOP_LIMIT],
        "attacking_ips": len({e.client_ip for e in events if e.result in FAILURE_RESULTS}),
    }


@pytest.mark.django_db
@pytest.mark.parametrize("preset", ["1h", "24h", "7d", "30d", "custom"])
def test_charts_over_hourly_rollups_show_exactly_the_events(superadmin, now, preset):
    ingest(*spread_events(now))
    if preset == "custom":  # ends inside hours: hourly rows in the middle, minute rows at both ends
        # Anchored to the hour, so both ends stay inside hours (15-minute buckets) at any wall-clock time.
        hour = now.replace(minute=0, second=0, microsecond=0)
        start, end = hour - dt.timedelta(hours=30) + dt.timedelta(minutes=20), hour - dt.timedelta(hours=3, minutes=25)
        tr = charts.custom_range(start.isoformat(), end.isoformat())
        assert tr.start.minute or tr.end.minute
    else:
        tr = charts.preset_range(preset, now)
    expected = expected_from_events(tr)
    timeline = charts.timeline(superadmin, tr)
    assert timeline.series == {"failed": expected["failed"], "success": expected["success"]}
    assert [n for _, n in charts.reasons(superadmin, tr).rows] == expected["reasons"]
    assert charts.top_users(superadmin, tr).rows == expected["top_users"]
    assert charts.countries(superadmin, tr).rows == expected["countries"]
    assert charts.mechanisms(superadmin, tr).rows == expected["mechanisms"]
    assert [(r[0], r[3]) for r in charts.top_ips(superadmin, tr).rows] == expected["top_ips"]
    assert [n for _, n in charts.listeners(superadmin, tr).rows] == expected["listeners"]
    assert charts.counters(superadmin, tr)["attacking_ips"] == expected["attacking_ips"]


@pytest.mark.django_db
def test_retention_prunes_hourly_rollups_with_the_minute_ones(now):
    from mailadmin.monitoring.retention import prune

    ingest(event(ts=now - dt.timedelta(days=401)), event(ts=now))
    prune(now)
    assert {r.hour for r in HourlyRollup.objects.all()} == {now.replace(minute=0, second=0, microsecond=0)}
    assert Rollup.objects.filter(minute__lt=now - dt.timedelta(days=2)).count() == 0
