import datetime as dt
import time

import pytest
from django.urls import reverse
from django.utils import timezone

from mailadmin.monitoring.blocks import POLL_SECONDS, check_source
from mailadmin.monitoring.models import AllowedNetwork, Block
from mailadmin.staff.models import AuditEntry


@pytest.fixture
def some_blocks(db):
    now = timezone.now()
    return {
        "ip": Block.objects.create(
            kind="ip", value="203.0.113.9", reason="brute force", expires_at=now + dt.timedelta(hours=1)
        ),
        "a": Block.objects.create(
            kind="ip_user",
            value="203.0.113.9",
            username="ann@a.example",
            reason="x",
            expires_at=now + dt.timedelta(hours=1),
        ),
        "b": Block.objects.create(
            kind="ip_user",
            value="192.0.2.1",
            username="bob@b.example",
            reason="y",
            expires_at=now + dt.timedelta(hours=1),
        ),
        "old": Block.objects.create(
            kind="ip", value="198.51.100.1", reason="old", expires_at=now - dt.timedelta(hours=1)
        ),
    }


def listed(response):
    return set(response.context["page"].object_list)


def test_lists_are_scoped(super_client, login_as, admin_a, some_blocks):
    client_a = login_as(admin_a)
    assert listed(super_client.get(reverse("monitoring:blocks"))) == {some_blocks[k] for k in ("ip", "a", "b")}
    assert listed(super_client.get(reverse("monitoring:blocks"), {"status": "expired"})) == {some_blocks["old"]}
    assert listed(client_a.get(reverse("monitoring:blocks"), {"status": "all"})) == {some_blocks["a"]}


@pytest.mark.embedded
def test_unblock_lifts_and_audits(super_client, some_blocks):
    assert check_source("203.0.113.9", None).blocked
    response = super_client.post(reverse("monitoring:block_lift", args=[some_blocks["ip"].pk]))
    assert response.status_code == 302
    some_blocks["ip"].refresh_from_db()
    assert some_blocks["ip"].lifted_by == "root@staff.example"
    time.sleep(POLL_SECONDS + 0.1)  # every process notices the change within one poll
    assert not check_source("203.0.113.9", None).blocked
    assert AuditEntry.objects.filter(object_kind="block", object_id=str(some_blocks["ip"].pk)).exists()


def test_scoping_of_unblock(client_a, login_as, auditor, some_blocks):
    auditor_client = login_as(auditor)
    assert client_a.post(reverse("monitoring:block_lift", args=[some_blocks["b"].pk])).status_code == 404
    assert client_a.post(reverse("monitoring:block_lift", args=[some_blocks["ip"].pk])).status_code == 404
    assert auditor_client.post(reverse("monitoring:block_lift", args=[some_blocks["ip"].pk])).status_code == 403
    assert client_a.post(reverse("monitoring:block_lift", args=[some_blocks["a"].pk])).status_code == 302
    some_blocks["a"].refresh_from_db()
    assert some_blocks["a"].lifted_at is not None


def test_manual_block_with_expiry(super_client, db):
    super_client.post(
        reverse("monitoring:block_create"), {"kind": "prefix", "value": "203.0.113.77/24", "hours": "2", "reason": "r"}
    )
    block = Block.objects.get()
    assert block.value == "203.0.113.0/24"
    assert dt.timedelta(minutes=119) < block.expires_at - timezone.now() <= dt.timedelta(hours=2)
    time.sleep(POLL_SECONDS + 0.1)
    assert check_source("203.0.113.5", None).blocked


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "ip", "value": "not-an-ip", "hours": "1"},
        {"kind": "ip", "value": "192.0.2.1", "hours": "-5"},
        {"kind": "ip_user", "value": "192.0.2.1", "username": "", "hours": "1"},
        {"kind": "teleport", "value": "192.0.2.1", "hours": "1"},
    ],
)
def test_bad_manual_blocks_are_messages(super_client, db, data):
    response = super_client.post(reverse("monitoring:block_create"), data, follow=True)
    assert response.status_code == 200
    assert b"The block was not created" in response.content
    assert not Block.objects.exists()


def test_domain_admin_only_blocks_pairs_in_own_domains(client_a, db):
    client_a.post(reverse("monitoring:block_create"), {"kind": "ip", "value": "192.0.2.1", "hours": "1"})
    client_a.post(
        reverse("monitoring:block_create"),
        {"kind": "ip_user", "value": "192.0.2.1", "username": "bob@b.example", "hours": "1"},
    )
    assert not Block.objects.exists()
    client_a.post(
        reverse("monitoring:block_create"),
        {"kind": "ip_user", "value": "192.0.2.1", "username": "ann@a.example", "hours": "1"},
    )
    assert Block.objects.get().username == "ann@a.example"


def test_allowlisted_networks_cannot_be_blocked(super_client, db):
    AllowedNetwork.objects.create(cidr="192.0.2.0/24", note="office")
    response = super_client.post(reverse("monitoring:ip_block", args=["192.0.2.10"]), follow=True)
    assert b"on the allowlist" in response.content
    assert not Block.objects.exists()


def test_allowlist_crud_audited(super_client, db):
    super_client.post(reverse("monitoring:allowlist_create"), {"cidr": "198.51.100.9/24", "note": "branch office"})
    network = AllowedNetwork.objects.get()
    assert network.cidr == "198.51.100.0/24"
    super_client.post(reverse("monitoring:allowlist_edit", args=[network.pk]), {"cidr": network.cidr, "note": "HQ"})
    network.refresh_from_db()
    assert network.note == "HQ"
    response = super_client.post(reverse("monitoring:allowlist_create"), {"cidr": "nonsense"}, follow=True)
    assert b"Not added" in response.content
    super_client.post(reverse("monitoring:allowlist_delete", args=[network.pk]))
    assert not AllowedNetwork.objects.exists()
    assert list(AuditEntry.objects.filter(object_kind="allowednetwork").values_list("action", flat=True)) == [
        "delete",
        "update",
        "create",
    ]


def test_allowlist_is_for_superadmins(client_a, login_as, auditor, db):
    auditor_client = login_as(auditor)
    network = AllowedNetwork.objects.create(cidr="192.0.2.0/24")
    assert client_a.get(reverse("monitoring:allowlist")).status_code == 403
    assert auditor_client.get(reverse("monitoring:allowlist")).status_code == 200
    assert auditor_client.post(reverse("monitoring:allowlist_delete", args=[network.pk])).status_code == 403
    assert client_a.post(reverse("monitoring:allowlist_create"), {"cidr": "10.0.0.0/8"}).status_code == 403
