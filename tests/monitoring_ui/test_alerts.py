import datetime as dt

import pytest
from django.urls import reverse

from mailadmin.monitoring.models import Alert, Block
from mailadmin.staff.models import AuditEntry


def make_alert(rule="account_bruteforce", username="user1@a.example", ip="203.0.113.9", severity="high", **extra):
    now = dt.datetime.now(dt.UTC)
    entity = {"ip": ip, "username": username} if username else {"ip": ip}
    domain = username.split("@")[1] if username else ""
    return Alert.objects.create(
        rule=rule,
        entity_key=f"ip_user:{ip}|{username}" if username else f"ip:{ip}",
        entity=entity,
        severity=severity,
        domain_name=domain,
        first_seen=now - dt.timedelta(minutes=40),
        last_seen=now - dt.timedelta(minutes=20),
        count=6,
        window_seconds=600,
        evidence=[{"ts": "2026-03-02T09:00:00Z", "ip": ip, "username": username or "", "result": "bad_credentials"}],
        **extra,
    )


@pytest.fixture
def alert_a(attack):
    return make_alert()


@pytest.fixture
def alert_b(attack):
    return make_alert(username="zed@b.example", ip="192.0.2.78", severity="low")


@pytest.fixture
def alert_global(attack):
    return make_alert(rule="ip_bruteforce", username="", severity="critical")


def test_inbox_is_scoped(client_a, alert_a, alert_b, alert_global):
    response = client_a.get(reverse("monitoring:alerts"))
    assert list(response.context["page"].object_list) == [alert_a]
    assert client_a.get(reverse("monitoring:alert", args=[alert_b.pk])).status_code == 404
    assert client_a.get(reverse("monitoring:alert", args=[alert_global.pk])).status_code == 404
    assert client_a.get(reverse("monitoring:alert_timeline", args=[alert_b.pk])).status_code == 404


def test_superadmin_sees_all_sorted_by_severity(super_client, alert_a, alert_b, alert_global):
    page = super_client.get(reverse("monitoring:alerts")).context["page"]
    assert [a.severity for a in page.object_list] == ["critical", "high", "low"]
    page = super_client.get(reverse("monitoring:alerts"), {"severity": "low"}).context["page"]
    assert list(page.object_list) == [alert_b]


def test_bad_filters_are_a_message(super_client, alert_a):
    response = super_client.get(
        reverse("monitoring:alerts"), {"status": "x", "severity": "y", "page": "99999"}, follow=True
    )
    assert response.status_code == 200
    assert b"Unknown status filter" in response.content


def test_detail_shows_evidence_and_timeline(client_a, alert_a):
    response = client_a.get(reverse("monitoring:alert", args=[alert_a.pk]))
    assert response.status_code == 200
    assert b'data-testid="evidence-table"' in response.content
    data = client_a.get(reverse("monitoring:alert_timeline", args=[alert_a.pk])).json()
    assert sum(data["series"]["failed"]) == 1  # user1's one failure from that IP


def test_acknowledge_resolve_safe_are_audited(client_a, alert_a):
    url = reverse("monitoring:alert_action", args=[alert_a.pk])
    for action, status in [("acknowledge", "acknowledged"), ("resolve", "resolved"), ("safe", "safe")]:
        assert client_a.post(url, {"action": action}).status_code == 302
        alert_a.refresh_from_db()
        assert alert_a.status == status
    assert alert_a.status_changed_by == "admin-a@staff.example"
    entries = AuditEntry.objects.filter(object_kind="alert", object_id=str(alert_a.pk))
    assert entries.count() == 3
    assert entries.first().changes["status"] == ["resolved", "safe"]


def test_auditor_cannot_act_and_b_cannot_touch_a(auditor_client, alert_a, client):
    url = reverse("monitoring:alert_action", args=[alert_a.pk])
    assert auditor_client.post(url, {"action": "acknowledge"}).status_code == 403
    assert (
        auditor_client.post(reverse("monitoring:alert_bulk"), {"action": "resolve", "ids": [alert_a.pk]}).status_code
        == 403
    )
    alert_a.refresh_from_db()
    assert alert_a.status == "open"


def test_b_cannot_act_on_a(client_b, alert_a):
    url = reverse("monitoring:alert_action", args=[alert_a.pk])
    assert client_b.post(url, {"action": "acknowledge"}).status_code == 404
    client_b.post(reverse("monitoring:alert_bulk"), {"action": "resolve", "ids": [alert_a.pk]})
    alert_a.refresh_from_db()
    assert alert_a.status == "open"


def test_bulk_actions(super_client, alert_a, alert_b, alert_global):
    response = super_client.post(
        reverse("monitoring:alert_bulk"), {"action": "acknowledge", "ids": [alert_a.pk, alert_b.pk, "junk"]}
    )
    assert response.status_code == 302
    assert set(Alert.objects.filter(status="acknowledged")) == {alert_a, alert_b}
    assert AuditEntry.objects.filter(object_kind="alert").count() == 2


def test_block_and_unblock_from_an_alert(super_client, alert_global):
    url = reverse("monitoring:alert_action", args=[alert_global.pk])
    super_client.post(url, {"action": "block"})
    block = Block.objects.get(alert=alert_global)
    assert block.kind == "ip" and block.value == "203.0.113.9" and block.is_active()
    alert_global.refresh_from_db()
    assert "blocked 203.0.113.9" in alert_global.action
    super_client.post(url, {"action": "unblock"})
    block.refresh_from_db()
    assert not block.is_active()
    assert AuditEntry.objects.filter(object_kind="block").count() == 2


def test_domain_admin_blocks_the_pair_not_the_ip(client_a, alert_a):
    url = reverse("monitoring:alert_action", args=[alert_a.pk])
    assert client_a.post(url, {"action": "block"}).status_code == 403
    client_a.post(url, {"action": "block_pair"})
    block = Block.objects.get(alert=alert_a)
    assert (block.kind, block.value, block.username) == ("ip_user", "203.0.113.9", "user1@a.example")


def test_suspend_without_a_mailbox_is_a_message(client_a, alert_a):
    response = client_a.post(reverse("monitoring:alert_action", args=[alert_a.pk]), {"action": "suspend"}, follow=True)
    assert b"no mailbox user1@a.example" in response.content
