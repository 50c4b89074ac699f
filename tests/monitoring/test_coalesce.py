"""A busy ingest worker takes the batches already queued along with its own (one ingest, one
commit), acks them only after ingesting, and puts them back when the ingest fails."""

import uuid

import pytest
from django.conf import settings
from django.db import OperationalError

from mailadmin.monitoring import tasks
from mailadmin.monitoring.models import AuthEvent, Rollup
from mailadmin.monitoring.tasks import ingest_auth_events

from .factories import event

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queue():
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("taking queued batches needs the Redis broker (make test sets it)")
    from mailadmin.celery import app

    name = f"ingest-test-{uuid.uuid4().hex[:8]}"
    client = app.connection_for_write().default_channel.client
    tasks._broker.clear()
    yield name, client
    client.delete(name)
    tasks._broker.clear()


def _publish(name, task, events):
    from mailadmin.celery import app

    app.send_task(task, args=[events], queue=name, routing_key=name)


def _run_as_worker(name, events):
    ingest_auth_events.push_request(delivery_info={"routing_key": name}, is_eager=False)
    try:
        return ingest_auth_events.run(events)
    finally:
        ingest_auth_events.pop_request()


def _unacked(client, name):
    return [v for v in client.hvals("unacked") if name.encode() in v]


def test_queued_batches_are_ingested_with_the_task_and_acked(queue):
    name, client = queue
    own = [event("192.0.2.1", f"u{i}@a.example", result="success") for i in range(3)]
    queued = [[event("192.0.2.2", f"v{i}@a.example", result="success")] for i in range(4)]
    for batch in queued:
        _publish(name, tasks.INGEST_TASK, batch)
    _publish(name, "monitoring.record_messages_sent", [])  # another task: put back, ends the taking
    _publish(name, tasks.INGEST_TASK, [event("192.0.2.3", "w@a.example", result="success")])
    report = _run_as_worker(name, own)
    assert report["batches"] == 5 and report["inserted"] == 7
    assert AuthEvent.objects.count() == 7
    assert Rollup.objects.get(dimension="all", key="", result="success").count == 7
    assert not _unacked(client, name)
    left = client.lrange(name, 0, -1)
    assert len(left) == 2 and any(b"record_messages_sent" in m for m in left)


def test_a_failed_ingest_puts_the_queued_batches_back(queue, monkeypatch):
    name, client = queue
    for i in range(3):
        _publish(name, tasks.INGEST_TASK, [event("192.0.2.2", f"v{i}@a.example", result="success")])

    def down(batch):
        raise OperationalError("the database went away")

    monkeypatch.setattr("mailadmin.monitoring.ingest.ingest_events", down)
    with pytest.raises(OperationalError):
        _run_as_worker(name, [event("192.0.2.1", "u@a.example", result="success")])
    assert client.llen(name) == 3 and not _unacked(client, name)
    monkeypatch.undo()
    report = _run_as_worker(name, [])
    assert report["batches"] == 4 and report["inserted"] == 3


def test_the_budget_bounds_what_is_taken(queue, monkeypatch):
    name, client = queue
    monkeypatch.setattr(tasks, "COALESCE_MAX_EVENTS", 5)
    for i in range(4):
        _publish(name, tasks.INGEST_TASK, [event("192.0.2.2", f"v{i}-{j}@a.example") for j in range(2)])
    report = _run_as_worker(name, [event("192.0.2.1", "u@a.example")])
    assert report["batches"] == 3 and report["inserted"] == 5  # 1 + 2 + 2: the budget of 4 is spent
    assert client.llen(name) == 2


def test_a_taken_message_decodes_as_kombu_would():
    """Plain JSON bodies skip kombu's per-object hook; one with kombu's type tags goes through it."""
    import datetime as dt

    from kombu.utils.json import dumps

    class Taken:
        content_type, content_encoding = "application/json", "utf-8"

        def __init__(self, body):
            self.body = body.encode()

        def decode(self):
            from kombu.utils.json import loads

            return loads(self.body)

    plain = dumps([[[event()]], {}, {}])
    tagged = dumps([[[{"id": "x", "ts": dt.datetime(2026, 3, 2, tzinfo=dt.UTC)}]], {}, {}])
    assert "__type__" in tagged
    for body in (plain, tagged):
        assert tasks._decoded(Taken(body)) == Taken(body).decode()
    assert isinstance(tasks._decoded(Taken(tagged))[0][0][0]["ts"], dt.datetime)
