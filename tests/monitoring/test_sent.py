"""Sent-message counts per mailbox and hour: idempotent under redelivery (item ids)."""

import datetime as dt
import uuid

import pytest
from django.db import DatabaseError
from django.utils import timezone

from mailadmin.monitoring.models import SentCount, SentItem
from mailadmin.monitoring.retention import prune
from mailadmin.monitoring.sent import record_sent

NOW = timezone.now()


def item(user="ann@a.example", ts=NOW, count=1, **extra):
    ts = ts.isoformat() if isinstance(ts, dt.datetime) else ts
    return {"id": str(uuid.uuid4()), "username": user, "ts": ts, "count": count, **extra}


def counts():
    return {(c.username, c.hour): c.count for c in SentCount.objects.all()}


@pytest.mark.django_db
def test_a_batch_delivered_again_adds_nothing():
    hour = NOW.replace(minute=0, second=0, microsecond=0)
    batch = [item(), item(), item(user="bob@b.example", count=3), item(ts=NOW - dt.timedelta(hours=1))]
    assert record_sent(batch) == 4
    assert record_sent(batch) == 0
    assert record_sent(list(reversed(batch))) == 0
    assert counts() == {
        ("ann@a.example", hour): 2,
        ("bob@b.example", hour): 3,
        ("ann@a.example", hour - dt.timedelta(hours=1)): 1,
    }
    # An item repeated inside one batch, and new items alongside old ones.
    new = item()
    assert record_sent([new, new, batch[0]]) == 1
    assert counts()[("ann@a.example", hour)] == 3


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_failed_half_way_is_counted_once_when_retried():
    """The whole batch is one transaction: a failure leaves nothing counted, the retry counts it all once."""
    batch = [item(), item(), item(user="bob@b.example")]
    SentCount.objects.create(username="bob@b.example", hour=NOW.replace(minute=0, second=0, microsecond=0), count=0)
    # Make the last update fail the way a lost database would (a real error from PostgreSQL).
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION fail_sent() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'database went away'; END $$ "
            "LANGUAGE plpgsql"
        )
        table = SentCount._meta.db_table
        cursor.execute(f"CREATE TRIGGER fail_sent BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION fail_sent()")
    try:
        with pytest.raises(DatabaseError):
            record_sent(batch)
        assert not SentItem.objects.exists() and sum(counts().values()) == 0
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER fail_sent ON {SentCount._meta.db_table}")
            cursor.execute("DROP FUNCTION fail_sent()")
    assert record_sent(batch) == 3
    assert record_sent(batch) == 0
    assert sum(counts().values()) == 3


@pytest.mark.django_db
def test_bad_items_are_skipped_and_items_without_an_id_still_count():
    batch = [
        {"username": "old@a.example", "ts": NOW.isoformat()},  # an smtpd from before item ids
        item(user=""),
        item(count=-1),
        item(ts="yesterday"),
        {"id": "not-a-uuid", "username": "x@a.example", "ts": NOW.isoformat()},
        "garbage",
        item(user="ok@a.example"),
    ]
    assert record_sent(batch) == 2
    assert sorted(u for u, _ in counts()) == ["ok@a.example", "old@a.example"]


@pytest.mark.django_db
def test_counted_ids_are_pruned_with_the_raw_events(settings):
    record_sent([item()])
    SentItem.objects.update(received=NOW - dt.timedelta(days=settings.MONITORING_EVENT_RETENTION_DAYS + 1))
    record_sent([item()])
    assert prune(NOW)["sent_ids"] == 1
    assert SentItem.objects.count() == 1
    assert sum(counts().values()) == 2  # the counts themselves stay
