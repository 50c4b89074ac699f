import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from mailadmin.monitoring import charts
from mailadmin.monitoring.models import DetectorSetting
from mailadmin.staff.models import AuditEntry
from tests.monitoring.factories import event
from tests.monitoring_ui.conftest import ingest


@pytest.fixture
def rule(db):
    return DetectorSetting.objects.create(rule="ip_bruteforce", params={"failures": 10, "window_minutes": 10})


@pytest.fixture
def bursts(db):
    """Two 10-minute windows with 12 failures from one IP, one with 5."""
    base = charts.floor_to(timezone.now() - dt.timedelta(days=2), dt.timedelta(minutes=10))
    events = []
    for offset, n in [(0, 12), (60, 12), (120, 5)]:
        events += [event(client_ip="203.0.113.9", ts=base + dt.timedelta(minutes=offset, seconds=i)) for i in range(n)]
    ingest(*events)


def test_preview_counts_windows_over_the_threshold(bursts):
    assert charts.preview_rule("ip_bruteforce", {"failures": 10, "window_minutes": 10}) == 2
    assert charts.preview_rule("ip_bruteforce", {"failures": 5, "window_minutes": 10}) == 3
    assert charts.preview_rule("ip_bruteforce", {"failures": 100, "window_minutes": 10}) == 0
    assert charts.preview_rule("impossible_travel", {"window_minutes": 10}) is None


def test_preview_fragment(super_client, rule, bursts):
    response = super_client.post(reverse("monitoring:detector_preview", args=["ip_bruteforce"]), {"failures": "5"})
    assert b'data-testid="preview-count">3<' in response.content
    response = super_client.post(reverse("monitoring:detector_preview", args=["ip_bruteforce"]), {"failures": "lots"})
    assert b"is not a number" in response.content


def test_edit_saves_and_audits(super_client, rule):
    page = super_client.get(reverse("monitoring:detector_edit", args=["ip_bruteforce"]))
    assert page.status_code == 200
    super_client.post(
        reverse("monitoring:detector_edit", args=["ip_bruteforce"]), {"failures": "20", "window_minutes": "15"}
    )
    rule.refresh_from_db()
    assert rule.enabled is False  # the switch was not sent: off
    assert rule.params["failures"] == 20 and rule.params["window_minutes"] == 15
    assert AuditEntry.objects.filter(object_kind="detectorsetting").exists()


def test_bad_values_are_messages(super_client, rule):
    response = super_client.post(
        reverse("monitoring:detector_edit", args=["ip_bruteforce"]),
        {"failures": "-3", "window_minutes": "x"},
        follow=True,
    )
    assert response.status_code == 200
    assert b"must be above 0" in response.content
    rule.refresh_from_db()
    assert rule.params["failures"] == 10


def test_roles(client_a, login_as, auditor, rule):
    auditor_client = login_as(auditor)
    assert client_a.get(reverse("monitoring:detectors")).status_code == 403
    assert client_a.get(reverse("monitoring:detector_edit", args=["ip_bruteforce"])).status_code == 403
    assert auditor_client.get(reverse("monitoring:detectors")).status_code == 200
    response = auditor_client.post(reverse("monitoring:detector_edit", args=["ip_bruteforce"]), {"failures": "1"})
    assert response.status_code == 403
    assert auditor_client.get(reverse("monitoring:detector_edit", args=["nope"])).status_code == 404


def test_cleartext_preview_counts_addresses_per_window_and_others_say_why(super_client, db):
    base = charts.floor_to(timezone.now() - dt.timedelta(days=1), dt.timedelta(hours=1))
    refused = [event(client_ip=ip, result="tls_required", tls="", ts=base) for ip in ("203.0.113.1", "203.0.113.2")]
    refused += [event(client_ip="203.0.113.1", result="tls_required", tls="", ts=base + dt.timedelta(hours=3))]
    ingest(*refused, event(client_ip="203.0.113.3", result="bad_credentials", ts=base))
    assert charts.preview_rule("cleartext", {"window_minutes": 60}) == 3
    assert charts.preview_rule("cleartext", {"window_minutes": 1440}) in (2, 3)  # depends on the day boundary
    response = super_client.post(reverse("monitoring:detector_preview", args=["spray"]), {})
    assert b"distinct users and tries per user" in response.content
