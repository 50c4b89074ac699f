import uuid

import pytest

from mailadmin.monitoring.ingest import ingest_events
from mailadmin.monitoring.models import AuthEvent, Rollup
from mailadmin.monitoring.tasks import ingest_auth_events

from .factories import BASE, event


@pytest.mark.embedded
@pytest.mark.django_db
def test_it_inserts_each_event_once_under_redelivery():
    batch = [event(pw_fp=i) for i in range(5)]
    first = ingest_events(batch, replay=True)
    again = ingest_events(batch, replay=True)
    assert first.inserted == 5
    assert again.inserted == 0 and again.duplicates == 5
    assert AuthEvent.objects.count() == 5
    total = Rollup.objects.filter(dimension="all").values_list("count", flat=True)
    assert sum(total) == 5  # rollups did not count the redelivery


@pytest.mark.django_db
def test_it_counts_bad_events_without_failing_the_batch(caplog):
    good = event()
    bad = [
        "not an object",
        event(id="nope"),
        event(client_ip="999.1.1.1"),
        event(result="maybe"),
        event(ts="yesterday"),
        event(pw_fp="x", credential="hunter2-secret"),
        event(pw_fp=40000),  # not 12 bits: would not even fit the column
    ]
    report = ingest_events([*bad, good], replay=True)
    assert report.inserted == 1
    assert report.invalid == 7
    assert "hunter2" not in caplog.text


@pytest.mark.django_db
def test_it_enriches_and_scopes_by_username_domain(admin_a, admin_b, superadmin):
    ingest_events([event(client_ip="8.8.8.8", username="Ann@A.example")], replay=True)
    row = AuthEvent.objects.get()
    assert row.username == "ann@a.example" and row.domain_name == "a.example"
    assert row.country == "US" and row.as_name
    assert row.prefix == "8.8.8.0/24"
    assert AuthEvent.objects.visible_to(admin_a).count() == 1
    assert AuthEvent.objects.visible_to(admin_b).count() == 0
    assert AuthEvent.objects.visible_to(superadmin).count() == 1


@pytest.mark.django_db
def test_the_task_accepts_the_contract_and_clamps_future_clock_skew():
    future = BASE.replace(year=2099)
    result = ingest_auth_events([event(ts=future, id=str(uuid.uuid4()))])
    assert result["inserted"] == 1
    assert AuthEvent.objects.get().ts.year < 2099


@pytest.mark.django_db
def test_owner_portal_sign_ins_are_stored_with_the_web_listener():
    report = ingest_events([event(listener="web", mechanism="WEB"), event(listener="portal")], replay=True)
    assert report.inserted == 1 and report.invalid == 1
    stored = AuthEvent.objects.get()
    assert stored.listener is None and stored.mechanism == "WEB"


@pytest.mark.embedded
@pytest.mark.django_db
def test_an_ongoing_brute_force_opens_then_updates_its_alert_on_either_database():
    """The live alert is found and updated on SQLite too (the embedded default has no FOR UPDATE)."""
    import datetime as dt

    from mailadmin.monitoring.models import Alert

    attacker = "203.0.113.66"
    for minute in range(2):
        start = BASE + dt.timedelta(minutes=minute)
        batch = [
            event(attacker, f"user{i}@a.example", ts=start + dt.timedelta(seconds=i), pw_fp=minute * 100 + i)
            for i in range(30)
        ]
        ingest_events(batch, replay=True, notify=False)
    alert = Alert.objects.get(rule="ip_bruteforce", entity_key=f"ip:{attacker}")
    assert alert.count == 60  # the second minute's batch updated the alert the first one opened
    assert alert.last_seen == BASE + dt.timedelta(minutes=1, seconds=29)
    assert alert.first_seen == BASE and alert.evidence
