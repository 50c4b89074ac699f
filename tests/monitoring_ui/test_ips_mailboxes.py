import pytest
from django.urls import reverse

from mailadmin.monitoring.models import Block
from mailadmin.staff.models import AuditEntry


@pytest.mark.embedded
def test_ip_view_for_superadmin(super_client, attack):
    response = super_client.get(reverse("monitoring:ip", args=["203.0.113.9"]))
    assert response.status_code == 200
    assert response.context["summary"]["failures"] == 6
    assert len(response.context["users"]) == 6
    prefix = super_client.get(reverse("monitoring:ip", args=["203.0.113.0/24"]))
    assert prefix.context["summary"]["attempts"] == 6


def test_ip_view_is_scoped(client_b, login_as, admin_a, attack):
    client_a = login_as(admin_a)
    response = client_b.get(reverse("monitoring:ip", args=["203.0.113.9"]))
    assert response.context["summary"]["attempts"] == 0
    assert b"a.example" not in response.content
    assert client_a.get(reverse("monitoring:ip", args=["203.0.113.9"])).context["summary"]["attempts"] == 6


@pytest.mark.parametrize("target", ["not-an-ip", "1.2.3.4/77", "999.1.1.1"])
def test_bad_ip_is_a_message(super_client, db, target):
    response = super_client.get(reverse("monitoring:ip", args=[target]))
    assert response.status_code == 400
    assert b'data-testid="ip-error"' in response.content


def test_one_click_block_is_superadmin_only_and_audited(super_client, login_as, admin_a, auditor, attack):
    client_a, auditor_client = login_as(admin_a), login_as(auditor)
    assert client_a.post(reverse("monitoring:ip_block", args=["203.0.113.9"])).status_code == 403
    assert auditor_client.post(reverse("monitoring:ip_block", args=["203.0.113.9"])).status_code == 403
    super_client.post(reverse("monitoring:ip_block", args=["203.0.113.9"]), {"next": "https://evil.example/"})
    block = Block.objects.get()
    assert (block.kind, block.value, block.rule) == ("ip", "203.0.113.9", "manual")
    assert AuditEntry.objects.get(object_kind="block").action == "create"
    top = super_client.get(reverse("monitoring:chart_json", args=["top_ips"]), {"range": "1h"}).json()
    assert top["rows"][0][5] is True


@pytest.mark.embedded
def test_mailbox_view(client_a, attack):
    response = client_a.get(reverse("monitoring:mailbox", args=["ann@a.example"]))
    assert response.status_code == 200
    assert b"laptop.a.example" in response.content
    assert len(response.context["events"]) == 1


def test_mailbox_view_is_scoped(client_b, login_as, admin_a, auditor, attack):
    client_a, auditor_client = login_as(admin_a), login_as(auditor)
    assert client_b.get(reverse("monitoring:mailbox", args=["ann@a.example"])).status_code == 404
    assert client_a.get(reverse("monitoring:mailbox", args=["bob@b.example"])).status_code == 404
    assert client_a.get(reverse("monitoring:mailbox", args=["no-domain"])).status_code == 404
    assert auditor_client.get(reverse("monitoring:mailbox", args=["bob@b.example"])).status_code == 200
    assert client_b.post(reverse("monitoring:mailbox_suspend", args=["ann@a.example"])).status_code == 404
    assert auditor_client.post(reverse("monitoring:mailbox_suspend", args=["ann@a.example"])).status_code == 403
