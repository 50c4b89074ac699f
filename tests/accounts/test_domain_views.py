import pytest
from django.urls import reverse

from mailadmin.accounts.models import Domain
from mailadmin.staff.models import AuditEntry


def url(name, *args):
    return reverse(f"accounts:{name}", args=args)


# --- list -------------------------------------------------------------------


@pytest.mark.embedded
def test_superadmin_lists_every_domain(super_client, domain_a, domain_b):
    response = super_client.get(url("domain_list"))
    assert response.status_code == 200
    assert b"a.example" in response.content and b"b.example" in response.content


def test_domain_admin_lists_only_their_domains(client_b, domain_a, domain_b):
    response = client_b.get(url("domain_list"))
    assert [d.name for d in response.context["page"]] == ["b.example"]


def test_search_matches_names_and_unicode_input(super_client, domain_a):
    Domain.objects.create(name="xn--bcher-kva.example")
    response = super_client.get(url("domain_list"), {"q": "bücher"})
    assert [d.name for d in response.context["page"]] == ["xn--bcher-kva.example"]
    assert "bücher.example".encode() in response.content


def test_list_is_paginated(super_client, db):
    Domain.objects.bulk_create(Domain(name=f"d{i:02}.example") for i in range(30))
    first = super_client.get(url("domain_list"))
    assert b"d24.example" in first.content and b"d25.example" not in first.content
    second = super_client.get(url("domain_list"), {"page": 2})
    assert b"d25.example" in second.content and b"Page 2 of 2" in second.content


# --- detail -----------------------------------------------------------------


def test_domain_admin_gets_404_for_another_domain(client_b, domain_a):
    assert client_b.get(url("domain_detail", domain_a.pk)).status_code == 404


def test_auditor_reads_detail_without_write_buttons(auditor_client, domain_a):
    response = auditor_client.get(url("domain_detail", domain_a.pk))
    assert response.status_code == 200
    assert b">Edit<" not in response.content and b"Delete" not in response.content


# --- create -----------------------------------------------------------------


@pytest.mark.embedded
def test_superadmin_creates_idna_domain_and_it_is_audited(super_client, superadmin):
    response = super_client.post(
        url("domain_create"), {"name": "Bücher.Example", "max_mailboxes": 10, "default_send_rate": 100}
    )
    domain = Domain.objects.get()
    assert domain.name == "xn--bcher-kva.example"
    assert response.status_code == 302 and response["Location"] == domain.get_absolute_url()
    page = super_client.get(domain.get_absolute_url())
    assert "bücher.example".encode() in page.content
    entry = AuditEntry.objects.get(action="create")
    assert entry.actor == superadmin and entry.object_kind == "domain" and entry.domain == domain
    assert entry.changes["name"] == [None, "xn--bcher-kva.example"]
    assert entry.changes["max_mailboxes"] == [None, 10]


def test_duplicate_name_is_refused_case_insensitively(super_client, domain_a):
    response = super_client.post(url("domain_create"), {"name": "A.EXAMPLE", "default_send_rate": 100})
    assert response.status_code == 200
    assert "already exists" in response.context["form"].errors["name"][0]
    assert Domain.objects.count() == 1


@pytest.mark.parametrize("bad", ["localhost", "exa mple.com", "-bad.example", "a..example", "x" * 64 + ".com"])
def test_invalid_names_get_a_field_error_and_nothing_is_saved(super_client, bad):
    response = super_client.post(url("domain_create"), {"name": bad, "default_send_rate": 100})
    assert response.status_code == 200
    assert response.context["form"].errors["name"]
    assert not Domain.objects.exists()
    assert not AuditEntry.objects.exists()


def test_bad_limit_gets_a_field_error(super_client, db):
    response = super_client.post(url("domain_create"), {"name": "ok.example", "default_send_rate": 0})
    assert response.context["form"].errors["default_send_rate"]
    assert not Domain.objects.exists()


@pytest.mark.parametrize("who", ["client_a", "auditor_client"])
def test_only_superadmins_create(request, who):
    client = request.getfixturevalue(who)
    assert client.get(url("domain_create")).status_code == 403
    assert client.post(url("domain_create"), {"name": "new.example", "default_send_rate": 1}).status_code == 403
    assert not Domain.objects.filter(name="new.example").exists()


# --- edit -------------------------------------------------------------------


def test_superadmin_edit_is_audited_with_a_diff(super_client, domain_a):
    data = {"description": "Main", "max_mailboxes": 50, "default_send_rate": 200, "cram_md5_enabled": "on"}
    response = super_client.post(url("domain_edit", domain_a.pk), data)
    assert response.status_code == 302
    domain_a.refresh_from_db()
    assert domain_a.max_mailboxes == 50 and domain_a.cram_md5_enabled
    entry = AuditEntry.objects.get(action="update")
    assert entry.changes == {
        "cram_md5_enabled": [False, True],
        "description": ["", "Main"],
        "max_mailboxes": [0, 50],
    }


def test_unchanged_edit_writes_no_audit_row(super_client, domain_a):
    super_client.post(url("domain_edit", domain_a.pk), {"max_mailboxes": 0, "default_send_rate": 200})
    assert not AuditEntry.objects.exists()


def test_domain_admin_edits_only_limited_fields_of_own_domain(client_a, domain_a):
    form = client_a.get(url("domain_edit", domain_a.pk)).context["form"]
    assert set(form.fields) == {"description", "require_app_passwords"}
    data = {"description": "ours", "max_mailboxes": 999, "cram_md5_enabled": "on"}
    assert client_a.post(url("domain_edit", domain_a.pk), data).status_code == 302
    domain_a.refresh_from_db()
    assert domain_a.description == "ours"
    assert domain_a.max_mailboxes == 0 and not domain_a.cram_md5_enabled


def test_domain_admin_cannot_edit_another_domain(client_a, domain_b):
    assert client_a.post(url("domain_edit", domain_b.pk), {"description": "x"}).status_code == 404
    domain_b.refresh_from_db()
    assert domain_b.description == ""


def test_auditor_edit_is_forbidden(auditor_client, domain_a):
    assert auditor_client.post(url("domain_edit", domain_a.pk), {"description": "x"}).status_code == 403


# --- disable / enable / delete ------------------------------------------------


def test_superadmin_disables_and_enables(super_client, domain_a):
    super_client.post(url("domain_disable", domain_a.pk))
    domain_a.refresh_from_db()
    assert not domain_a.is_active
    super_client.post(url("domain_enable", domain_a.pk))
    domain_a.refresh_from_db()
    assert domain_a.is_active
    changes = list(AuditEntry.objects.order_by("id").values_list("changes", flat=True))
    assert changes == [{"is_active": [True, False]}, {"is_active": [False, True]}]


def test_disable_needs_post(super_client, domain_a):
    assert super_client.get(url("domain_disable", domain_a.pk)).status_code == 405


def test_domain_admin_cannot_disable(client_a, client, domain_a, domain_b):
    assert client_a.post(url("domain_disable", domain_a.pk)).status_code == 403
    assert client_a.post(url("domain_disable", domain_b.pk)).status_code == 404
    assert Domain.objects.filter(is_active=True).count() == 2


def test_delete_asks_for_confirmation(super_client, domain_a):
    response = super_client.get(url("domain_delete", domain_a.pk))
    assert response.status_code == 200 and b"Delete a.example?" in response.content
    response = super_client.post(url("domain_delete", domain_a.pk), {"confirm_name": "b.example"})
    assert response.context["form"].errors["confirm_name"]
    assert Domain.objects.filter(pk=domain_a.pk).exists()


def test_confirmed_delete_removes_and_audits(super_client, domain_a):
    pk = domain_a.pk
    response = super_client.post(url("domain_delete", pk), {"confirm_name": "A.example"})
    assert response.status_code == 302
    assert not Domain.objects.filter(pk=pk).exists()
    entry = AuditEntry.objects.get(action="delete")
    assert entry.object_id == str(pk) and entry.domain_name == "a.example" and entry.domain is None
    assert entry.changes["name"] == ["a.example", None]


def test_domain_admin_cannot_delete(client_a, domain_a):
    assert client_a.post(url("domain_delete", domain_a.pk), {"confirm_name": "a.example"}).status_code == 403
    assert Domain.objects.filter(pk=domain_a.pk).exists()
