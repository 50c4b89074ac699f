import csv
import io

import pytest
from django.urls import reverse

from mailadmin.staff import audit
from mailadmin.staff.models import AuditEntry


@pytest.fixture
def entries(superadmin, admin_a, admin_b, domain_a, domain_b):
    """One change in each domain, one global staff change, and each admin's own login."""
    audit.record(admin_a, "update", domain_a, changes={"description": ["", "A"]})
    audit.record(admin_b, "update", domain_b, changes={"description": ["", "B"]})
    audit.record(superadmin, "role_change", admin_b, changes={"role": ["auditor", "domain_admin"]})
    audit.record(admin_a, "login", admin_a)
    audit.record(admin_b, "login", admin_b)


def _shown(response):
    return {(e.actor_email, e.action, e.object_repr) for e in response.context["page"]}


def _csv(response):
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


@pytest.mark.embedded
def test_superadmin_sees_everything(super_client, entries):
    response = super_client.get(reverse("staff:audit_log"))
    assert response.status_code == 200
    assert len(response.context["page"]) == 5


def test_domain_admin_sees_own_domain_and_own_entries_only(client_b, entries):
    shown = _shown(client_b.get(reverse("staff:audit_log")))
    assert shown == {
        ("admin-b@staff.example", "update", "b.example"),
        ("admin-b@staff.example", "login", "admin-b@staff.example"),
    }


def test_export_is_scoped_the_same_way(client_b, entries):
    rows = _csv(client_b.get(reverse("staff:audit_export")))
    assert {row["domain"] for row in rows} == {"b.example", ""}
    assert all("a.example" not in row["object"] and row["actor"] != "admin-a@staff.example" for row in rows)
    assert len(rows) == 2


def test_all_domain_auditor_sees_everything_but_scoped_auditor_does_not(auditor_client, auditor, domain_a, entries):
    assert len(auditor_client.get(reverse("staff:audit_log")).context["page"]) == 5
    auditor.all_domains = False
    auditor.save()
    auditor.domains.set([domain_a])
    shown = _shown(auditor_client.get(reverse("staff:audit_log")))
    assert shown == {("admin-a@staff.example", "update", "a.example")}


def test_filters(super_client, entries):
    log = reverse("staff:audit_log")
    assert len(super_client.get(log, {"action": "login"}).context["page"]) == 2
    assert len(super_client.get(log, {"actor": "ROOT@"}).context["page"]) == 1
    assert len(super_client.get(log, {"object_kind": "domain"}).context["page"]) == 2
    assert len(super_client.get(log, {"since": "2000-01-01T00:00", "until": "2000-01-02T00:00"}).context["page"]) == 0
    assert len(super_client.get(log, {"since": "2000-01-01T00:00"}).context["page"]) == 5
    rows = _csv(super_client.get(reverse("staff:audit_export"), {"action": "role_change"}))
    assert len(rows) == 1 and rows[0]["changes"] == '{"role": ["auditor", "domain_admin"]}'


@pytest.mark.parametrize(
    "params", [{"action": "explode"}, {"since": "yesterday-ish"}, {"since": "2030-01-01", "until": "2020-01-01"}]
)
def test_bad_filter_values_give_a_message_not_a_500(super_client, entries, params):
    response = super_client.get(reverse("staff:audit_log"), params)
    assert response.status_code == 200
    assert b"not valid" in response.content
    assert len(response.context["page"]) == 0
    export = super_client.get(reverse("staff:audit_export"), params)
    assert export.status_code == 400 and b"Invalid filter" in export.content


def test_pagination(super_client, superadmin, domain_a):
    AuditEntry.objects.bulk_create(
        AuditEntry(actor=superadmin, actor_email=superadmin.email, action="update", object_kind="domain")
        for _ in range(60)
    )
    response = super_client.get(reverse("staff:audit_log"), {"action": "update", "page": 2})
    assert len(response.context["page"]) == 10
    assert b"action=update" in response.content  # the pager keeps the filters


def test_csv_cells_cannot_inject_formulas(super_client, superadmin):
    audit.record(superadmin, "update", object_kind="domain", object_repr="=HYPERLINK(1)")
    rows = _csv(super_client.get(reverse("staff:audit_export")))
    assert rows[0]["object"] == "'=HYPERLINK(1)"
